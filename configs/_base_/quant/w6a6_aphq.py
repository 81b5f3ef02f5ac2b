# APHQ-ViT: MLP Reconstruction, AdaLog + FPCS calibration, then APH-weighted block
# reconstruction with the published schedule (20,000 iterations x batch 32 per block: hours on
# a CPU; the demo configs use a short schedule) on 256 calibration images, the published
# detection count (reconstruction gains from them on the dinov2 testbed; README).
_base_ = ['./w6a6_adalog.py']
# MR starts from the least-squares fc2 fit, then 100 Adam steps (beyond the published start
# from the GELU weights with 1000 steps at lr 4e-5, which the dinov2 testbed measured 2.5 dB
# further from the float model on held-out images: benchmarks/mr_fidelity.py, README).
quant_cfg = dict(stages=['mr', 'calibrate', 'reconstruct'],
                 mr=dict(fc2_init='lstsq', iters=100, batch=512, rows=16384, lr=1e-4))
custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=256, seed=0)]
