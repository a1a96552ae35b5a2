"""Stage 1: images -> VAE latents -> forward diffusion -> FFT spectra -> Zarr store."""
