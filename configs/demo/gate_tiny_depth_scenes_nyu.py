# configs/depth/gate_sd15_scene_prompts_nyu.py on the tiny assets: the tiny depth demo (gate_tiny_depth_nyu.py) with
# every branch's prompt a template over NYU's scene names, chosen per image from its file name.
_base_ = ['./gate_tiny_depth_nyu.py']
prompt = 'a photo of a {}'  # {} = the scene ('living_room' -> 'living room')
model = dict(backbone=dict(prompt=prompt, prompt_classes='NYUDataset'))
