# mmq's commands. Every target installs what is missing first (tools/install.sh is idempotent).
PYTHON ?= python3
export PYTHON

.PHONY: install test demo demo-dinov2 smoke data benchmark-quantizers benchmark-accuracy

install:
	bash tools/install.sh

# pytest exits 5 when it collects no test: that is a failure here, never a silent pass.
test: install
	@$(PYTHON) -m pytest -m "not slow" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

smoke: install
	$(PYTHON) tools/smoke.py

# The main command: quantize the committed demo Swin Mask R-CNN at W4A4 and print float vs
# quantized box / mask AP (generates data/shapes first when it is absent).
demo: install
	$(PYTHON) tools/demo.py

# The same on the real-backbone demo detector (DINOv2 ViT-S/14 Mask R-CNN, committed with its
# backbone: no ONNX conversion needed).
demo-dinov2: install
	$(PYTHON) tools/demo.py --float-config configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py \
		--config configs/demo/mask-rcnn_dinov2-vits14_w4a4-adalog_shapes.py \
		--checkpoint checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth \
		--work-dir work_dirs/demo_dinov2_w4a4

data: install
	@test -f data/shapes/annotations/instances_val.json || \
		$(PYTHON) tools/generate_shapes_dataset.py data/shapes

benchmark-quantizers: install
	$(PYTHON) benchmarks/quantizer_benchmark.py

# The README's accuracy table: both demo detectors, every method at W3A3 / W4A4 / W6A6.
benchmark-accuracy: install data
	$(PYTHON) benchmarks/accuracy_benchmark.py
