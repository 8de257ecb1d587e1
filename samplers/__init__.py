"""Pure torch maths for FewStep: sigma schedules, k-diffusion-style solvers and the exact
denoisers of the lab. Nothing in this package imports ComfyUI."""
