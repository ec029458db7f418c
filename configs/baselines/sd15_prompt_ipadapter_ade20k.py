# Ablation: fine-grained prompt + IP-Adapter with the input image itself as the image prompt (one branch).
# The paper reports IP-Adapter as a weaker content-shift suppressor than ControlNet (Horse-21: 65.8 vs 66.2).
# Weights: hf download h94/IP-Adapter models/ip-adapter_sd15.safetensors models/image_encoder --local-dir checkpoints/ip-adapter
_base_ = ['../gate_ade20k.py']
ip_adapter = 'checkpoints/ip-adapter/models/ip-adapter_sd15.safetensors'
image_encoder = 'checkpoints/ip-adapter/models/image_encoder'   # CLIP ViT-H/14 (CLIPVisionModelWithProjection)
model = dict(backbone=dict(branches=[
    dict(name='prompt_ip', ip_adapters=[dict(path=ip_adapter, image_encoder=image_encoder, scale=1.0)]),
]))
