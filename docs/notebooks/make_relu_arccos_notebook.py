"""Writes relu_arccos_kernel.ipynb (next to this file, or to the path given) without outputs.

    python docs/notebooks/make_relu_arccos_notebook.py [OUT.ipynb]

The notebook is generated: edit this file, rerun it, and commit both (the tests check that
the committed notebook has the cells this file makes).
"""
import sys
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
CELLS = [
    md("# The ReLU arc-cosine kernel, from the Gaussian integral to compiled numbers\n\n"
       "We derive E[relu(u) relu(v)] for (u, v) centred Gaussian with unit variances and correlation cos θ "
       "(Cho & Saul 2009), compare it with limitlab's closed form, evaluate the limiting NNGP/NTK of a deep "
       "ReLU network, and plot it."),
    code("%matplotlib inline\nimport numpy as np\nimport sympy as sp\nimport matplotlib.pyplot as plt\n"
         "from limitlab.theory.kernels import MLP, dual\nfrom limitlab.theory import activations as A"),
    md("Write z = r (cos φ, sin φ); u = r cos φ and v = r cos(φ − θ). Both are positive for φ ∈ (θ − π/2, π/2). "
       "The radial and angular integrals separate:"),
    code("r, phi, theta = sp.symbols('r phi theta', positive=True)\n"
         "radial = sp.integrate(r**3 * sp.exp(-r**2 / 2), (r, 0, sp.oo)) / (2 * sp.pi)\n"
         "angular = sp.integrate(sp.cos(phi) * sp.cos(phi - theta), (phi, theta - sp.pi / 2, sp.pi / 2))\n"
         "derived = sp.simplify(radial * angular)\nderived"),
    md("limitlab's closed form at q1 = q2 = 1, as a function of the correlation c = cos θ:"),
    code("closed = dual('relu').nngp.subs({A.q1: 1, A.q2: 1})\nclosed"),
    md("The derived integral at θ = arccos c (θ ∈ [0, π]) minus the closed form simplifies to zero:"),
    code("difference = sp.simplify(derived.subs(theta, sp.acos(A.c)) - closed)\n"
         "assert difference == 0, difference\ndifference"),
    md("Evaluate the compiled kernel of a depth-3 ReLU network on points of the circle and compare its "
       "first layer with the closed form:"),
    code("t = np.linspace(0, np.pi, 200)\nX = np.sqrt(2) * np.stack([np.cos(t), np.sin(t)], axis=1)   # |x|^2 / d = 1\n"
         "x0 = X[:1]  # K^1 = 2 cos(theta): variance 2 doubles E[relu relu], the readout doubles it again\n"
         "net1 = MLP(1, 'relu', weight_var=2.0, bias_var=0.0)\n"
         "k1 = net1.nngp(x0, X)[0]\nexpected = 4 * np.array([float(derived.subs(theta, ti)) for ti in t])\n"
         "assert np.allclose(k1, expected, rtol=1e-12, atol=1e-14)\n"
         "print('largest |compiled - derived|:', np.abs(k1 - expected).max())\n"
         "kernels = {L: MLP(L, 'relu', weight_var=2.0).kernels(x0, X) for L in (1, 2, 3, 5)}"),
    code("fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))\nfor L, k in kernels.items():\n"
         "    ax[0].plot(t, k.nngp[0], label=f'L={L}')\n    ax[1].plot(t, k.ntk[0], label=f'L={L}')\n"
         "ax[0].set(xlabel='angle θ', title='NNGP'); ax[1].set(xlabel='angle θ', title='NTK'); ax[0].legend()\n"
         "fig.tight_layout()\nplt.show()"),
]


def notebook():
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = CELLS
    return nb


if __name__ == "__main__":
    nbf.write(notebook(), sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("relu_arccos_kernel.ipynb"))
