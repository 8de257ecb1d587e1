"""Pure maths for guided sampling (no ComfyUI import): the class-conditional exact-denoiser lab."""
