"""Hardware as data: a mesh file becomes a Topology of ranks, coordinates and links."""
