"""Neural symbolic regression of ODEs ("Symbolic Regression via Neural Networks", Boddupalli, Matchen, Moehlis,
Chaos 2023, arXiv 2605.04337; SymANNTEx, arXiv 2406.06585).

``config.py`` holds the hyper-parameter dataclass and the training schedule; ``network.py`` the symbolic-unit
network; ``derivatives.py`` the derivative targets; ``training.py`` the loss, the L1/2 penalty, masking and a
plain-torch fit loop; ``readout.py`` the sympy readout with the AICc threshold sweep; ``evaluation.py``
the comparison with known equations and held-out simulation; ``sindy.py`` the PySINDy
baseline; ``module.py`` the LightningModule ``SymbolicRegressionModule``; ``plots.py`` its figures.
See ``docs/symbolic_regression.md``. This file imports nothing.
"""
