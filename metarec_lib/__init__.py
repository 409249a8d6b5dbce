"""metarec: do meta-learning recommenders really adapt better, and at what cost?"""

__version__ = "0.1.0"
