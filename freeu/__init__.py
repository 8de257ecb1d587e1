"""FreeU maths (backbone scaling, Fourier filter of skip features) and the model patch."""
