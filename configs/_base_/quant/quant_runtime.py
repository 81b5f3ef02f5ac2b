# Loads mmq and adds the calibration hook; the hook reads the top-level `quant_cfg`.
custom_imports = dict(imports=['mmq'], allow_failed_imports=False)
custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=32, seed=0)]
