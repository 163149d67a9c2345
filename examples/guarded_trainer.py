"""A transformers Trainer run under turnout's guard: a tiny Llama on a toy corpus.

    python examples/guarded_trainer.py --out runs/llama --steps 130               # target: $TURNOUT_TARGET or best
    turnout supervise --target sim:flaky --fallback cpu --run runs/llama/turnout -- \
        python examples/guarded_trainer.py --out runs/llama --steps 130

Under the supervisor, the emulated flaky chip's faults are healed until its device errors make it untrusted;
the script then exits 86, and the supervisor starts it again on cpu, where it resumes from the guard's checkpoint.
"""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from turnout.integrations.transformers import GuardedTrainer


class ToyCorpus(torch.utils.data.Dataset):
    """Sequences of a few repeating token patterns: a loss that falls quickly and steadily."""

    def __init__(self, n: int, seq_len: int, vocab: int):
        g = torch.Generator().manual_seed(0)
        patterns = torch.randint(0, vocab, (8, 7), generator=g)
        picks = torch.randint(0, 8, (n,), generator=g)
        self.ids = torch.stack([patterns[p].repeat(seq_len // 7 + 1)[:seq_len] for p in picks.tolist()])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (the guard's record goes to OUT/turnout)")
    p.add_argument("--steps", type=int, default=130, help="optimizer steps (Trainer max_steps)")
    a = p.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    args = TrainingArguments(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=4, learning_rate=3e-3,
                             lr_scheduler_type="cosine", warmup_steps=5, logging_steps=10, save_strategy="no",
                             report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = GuardedTrainer(model=model, args=args, train_dataset=ToyCorpus(2000, 32, config.vocab_size),
                             checkpoint_every=10)
    trainer.train()
    print(f"done: {trainer.state.global_step} batches, loss {trainer.state.log_history[-1].get('train_loss', '?')}")


if __name__ == "__main__":
    main()
