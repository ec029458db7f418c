from setuptools import find_packages, setup

setup(
    name='mmseg-gate',
    version='0.1.0',
    description='Stable Diffusion features for MMSegmentation with GATE content-shift suppression',
    packages=find_packages(include=['mmseg_gate', 'mmseg_gate.*']),
    python_requires='>=3.10',
    # torch and mmcv (built from source, see README) are installed first by `make install`
    install_requires=[
        'torch>=2.1', 'mmcv>=2.0.0,<2.2.0', 'mmengine>=0.10', 'mmsegmentation>=1.2',
        'diffusers>=0.42', 'transformers>=5.0', 'peft>=0.17', 'accelerate', 'safetensors',
        'opencv-python-headless', 'ftfy', 'regex', 'tokenizers', 'scikit-image', 'matplotlib', 'tqdm',
    ],
    extras_require={'dev': ['pytest', 'pytest-timeout', 'cityscapesscripts']},
)
