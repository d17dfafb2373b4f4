"""Whole-slide images: readers, model-resolution frames, tissue, blocks, streamed outputs.

`nucseg predict` routes a slide here (`is_slide`: scanner formats by extension, pyramidal or
very large TIFFs) instead of reading it whole; `nucseg slide info` prints what a reader knows.
See docs/slides.md for the rules.
"""
from nucseg.prediction.slides.predict import SlideOptions, is_done, predict_slide, slide_done
from nucseg.prediction.slides.reader import SLIDE_EXTENSIONS, SlideInfo, is_slide, open_slide

__all__ = ["SLIDE_EXTENSIONS", "SlideInfo", "SlideOptions", "is_done", "is_slide", "open_slide",
           "predict_slide", "slide_done"]
