from setuptools import find_packages, setup

setup(
    name='mmseg-gate',
    version='0.1.0',
    description='Stable Diffusion features for MMSegmentation with GATE content-shift suppression',
    # gate_features: the diffusers-side extractor (no mmseg/mmengine/mmcv); mmseg_gate: the mmseg layer over it
    packages=find_packages(include=['gate_features', 'gate_features.*', 'mmseg_gate', 'mmseg_gate.*']),
    python_requires='>=3.10',
    # Honest ranges for installing into your own environment; `make install` uses the verified stack of
    # requirements/lock.txt instead. torch and mmcv (built from source, tools/install_mmcv.py) come first.
    install_requires=[
        'torch>=2.1', 'mmcv>=2.0.0,<2.2.0', 'mmengine>=0.10', 'mmsegmentation>=1.2',
        # transformers >= 5.24 refuses peft < 0.22 ("The version of PEFT you are using is not compatible");
        # raise this bound together with peft once that pair is verified
        'diffusers>=0.42', 'transformers>=5.0,<5.24', 'peft>=0.17', 'accelerate', 'safetensors',
        'numpy>=2,<2.4',  # cityscapesscripts calls np.in1d, removed in numpy 2.4
        'opencv-python-headless', 'ftfy', 'regex', 'tokenizers', 'scikit-image', 'matplotlib', 'tqdm',
        'albumentations>=2.0,<2.1',  # mmseg's NYU depth pipeline (Albu), configs/depth/
    ],
    # quant: quantization=dict(type='TorchAoConfig', ...) of the FLUX configs (bitsandbytes: install it yourself,
    # GPU only); dev has it so that the quantized path is tested on CPU
    extras_require={'dev': ['pytest', 'pytest-timeout', 'cityscapesscripts', 'torchao'], 'quant': ['torchao']},
)
