"""Model patches: functions that change how a MODEL samples without copying it.

Each module builds the hook functions a ModelPatcher clone carries in its model_options (the setters
in diffusion/model_patcher.py, the UNet patch points in diffusion/models/unet.py); the node adapters
are in nodes/model_patch_nodes.py. The maths follows ComfyUI's comfy_extras modules of the same
purpose (nodes_model_advanced, nodes_freelunch, nodes_perpneg, nodes_sag, nodes_model_downscale,
nodes_tomesd, nodes_hypernetwork), written anew.
"""
