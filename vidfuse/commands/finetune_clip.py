"""``vidfuse finetune-clip``: ``vidfuse finetune`` under the name it had when only CLIP was fine-tuned."""

from vidfuse.commands.finetune import check_clip_ft_values, register, run  # noqa: F401
