"""Benchmark evaluation: the items (``items``), the log-likelihood scorer (``scorer``), the metrics
(``metrics``), models to score (``models``) and a whole evaluation (``run``); and decontamination of
training data against the same items (``decontam``)."""
