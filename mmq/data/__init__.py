"""Generated COCO-format data for tests, demos and benchmarks."""
from .shapes_coco import CATEGORIES, generate_shapes_coco

__all__ = ['CATEGORIES', 'generate_shapes_coco']
