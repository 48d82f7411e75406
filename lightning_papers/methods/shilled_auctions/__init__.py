"""Shill-robust bidding in repeated first-price auctions ("Do Not Trust The Auctioneer: Learning to Bid in
Feedback-Manipulated Auctions", Foscari, Tullii, Perchet, arXiv 2605.22438).

Files: ``environment.py`` (R replicas of the shilled auction, exact pseudo-regret), ``config.py`` (the
hyper-parameter dataclass), ``base.py`` (learner interface, grid elimination, the bidding loop, anytime
doubling), ``robust.py`` / ``optimistic.py`` / ``racing.py`` (the paper's branches and their race),
``baselines.py`` (naive, EXP3-IX, transparent, oracle), ``learners.py`` (``build_learner``), ``module.py``
(``ShilledAuctionModule``) and ``plots.py``.
"""
