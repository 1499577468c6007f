"""Pure, batched geometry: cameras, Sim(3) registration, depth layers, layer-scale alignment."""
