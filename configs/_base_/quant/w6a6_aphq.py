# APHQ-ViT: MLP Reconstruction, AdaLog + FPCS calibration, then APH-weighted block
# reconstruction with the published schedule (20,000 iterations x batch 32 per block: hours on
# a CPU; the demo configs use a short schedule) on 256 calibration images, the published
# detection count (reconstruction gains from them on the dinov2 testbed; README).
_base_ = ['./w6a6_adalog.py']
quant_cfg = dict(stages=['mr', 'calibrate', 'reconstruct'])
custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=256, seed=0)]
