"""Calibrated weight quantization from scratch: GPTQ, AWQ, and round-to-nearest on the same grid.

quantizer.py  the shared storage: n-bit codes per group with a scale and a zero point, packed
calibration.py the calibration text: where it comes from, its windows, and the proof that it
               shares no token span with the scored text
capture.py    the inputs of each decoder block, captured once and carried block to block
gptq.py       GPTQ (Frantar et al. 2022): Hessian, Cholesky inverse, column-wise updates
awq.py        AWQ (Lin et al. 2023): activation-aware scales, folded where the model allows

explore_calibrated.py is the command line that runs them.
"""
