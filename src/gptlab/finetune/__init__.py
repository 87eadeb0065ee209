"""gptlab.finetune: adapting pretrained weights with few trainable parameters.

Owns LoRA (lora.py): its config (`finetune=lora`), the adapters put into a GPT through Hugging Face peft with only
them trainable, the pretrained weights loaded under the adapted names, and the adapters folded back into plain GPT
weights. peft is imported only when a run or a checkpoint has adapters.

May import: gptlab.errors, model. Never Lightning, nor anything above model.
"""
