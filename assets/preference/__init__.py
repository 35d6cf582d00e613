"""Preference pairs for vision-language models, CLIP-DPO style: candidate captions per image,
ranked by CLIP and filtered by rules into (chosen, rejected) pairs for DPO training."""
