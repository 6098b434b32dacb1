"""The bundled Ideogram simulator (shipped: the demo and the tests use it)."""
