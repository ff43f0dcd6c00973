"""Synthetic documents: web documents rephrased by a local causal language model.

``templates`` loads a prompt by name (``templates/*.txt``, or a folder of one's own), ``generate``
holds the model on a Ray actor and generates in batches with per-document seeds, ``shard`` turns
one input shard into one output shard of ``SYNTHETIC_SCHEMA`` rows.
"""
