from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("nucseg/_version.py").read_text(), version)

setup(
    name="nucseg",
    version=version["__version__"],
    description="Nuclei instance segmentation in H&E histology: Mask R-CNN+ pipeline tools",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["nucseg", "nucseg.*"]),
    # shipped models: nucseg/models/<name>/ (model.yaml, config.yaml, weights, U-Net, MODEL.md)
    package_data={"nucseg.models": ["*/*.yaml", "*/*.h5", "*/*.md", "*/unet/*"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-image>=0.22",
        "opencv-python-headless>=4.8",
        "albumentations>=2.0,<2.1",
        "tifffile>=2023.1",
        "imagecodecs>=2023.1",
        "openslide-python>=1.4",      # whole-slide images (nucseg.prediction.slides)
        "openslide-bin>=4.0",         # the OpenSlide library itself, as a wheel
        "dask[distributed]>=2024.1",  # --dask: blocks, tiles and folds on a cluster
        "Pillow>=10.0",
        "h5py>=3.8",
        "click>=8.1",
        "tqdm>=4.60",
        "PyYAML>=6.0",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "test": ["pytest>=7.0", "jsonschema>=4.0", "matplotlib>=3.7"],
        "experiments": ["matplotlib>=3.7"],       # bin/reproduce-paper's figure
    },
    entry_points={"console_scripts": ["nucseg=nucseg.cli:run"]},
)
