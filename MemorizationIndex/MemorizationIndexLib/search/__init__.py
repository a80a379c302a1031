"""Search: whitening, stage-1 feature neighbours, pixel descriptors (foreground moments,
Fourier), stage-2 verification, and the SliceIndex that puts them together."""
