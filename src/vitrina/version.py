"""vitrina's version (a leaf: the package root imports the public API lazily)."""
__version__ = "0.1.0"
