"""Reading and writing run directories, PLY point clouds and trajectories."""
