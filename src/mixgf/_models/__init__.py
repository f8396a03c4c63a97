"""The user's model classes (:class:`~mixgf.MixGeneformer`, :class:`~mixgf.CellClassifier`) and :func:`mixgf.pretrain`."""
