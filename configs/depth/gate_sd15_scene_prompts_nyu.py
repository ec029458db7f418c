# GATE on NYU with per-scene prompts (ours, unvalidated): every branch's prompt is a template over NYU's 27 scene
# names, encoded once per scene at build; DepthEstimator passes each image's scene (from its file name), and the
# image gets its scene's prompt ('... a photo of a living room ...'). Unknown scenes get the mean of the 27.
_base_ = ['./gate_sd15_nyu.py']
prompt = 'a highly realistic photo of a {}, an indoor scene. high quality.'  # {} = the scene, '_' -> ' '
model = dict(backbone=dict(
    prompt=prompt,
    prompt_classes='NYUDataset'))  # its METAINFO classes, in category-id order; sets class_embed_select
