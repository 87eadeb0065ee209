"""gptlab weights as a model of EleutherAI's lm-evaluation-harness (`lm_eval.api.model.TemplateLM`).

TemplateLM turns (context, continuation) strings into token ids exactly as the harness's own Hugging Face model
does (trailing spaces of a context move to its continuation; an empty context becomes one prefix token), so the
same weights score the same here and through `lm_eval --model hf`. What is left here:

- loglikelihood: context + continuation cut to the last block_size + 1 tokens (the context loses its start, as
  the harness's HF model does), right-padded into batches, longest first; log-softmax over the tokenizer's ids
  only (a padded vocabulary's extra rows are not the model's to spread probability over).
- rolling loglikelihood: the harness's own disjoint windows of block_size, each token predicted once.
- generate_until: the model's KV-cache generation, greedy unless the task asks to sample, stopping at the task's
  `until` strings, GPT-2's <|endoftext|> (a char vocabulary has no end token) or max_gen_toks. One request at a
  time: prompts of different lengths would need left padding, which gptlab's positions do not take.

This module imports lm_eval at load time: import it only when tasks are asked for (gptlab.evaluation.benchmarks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptlab.errors import DataError, GptlabError
from gptlab.model.gpt import GPT
from gptlab.model.sampling import SamplingParams
from gptlab.model.text_stream import TextStream

MAX_GEN_TOKS = 256  # the harness's own default, for tasks that name none
# one scored request: ((context, continuation) or None, context ids, continuation ids)
Request = tuple[tuple[str, str] | None, list[int], list[int]]


class GptlabLM(TemplateLM):
    def __init__(self, model: GPT, tokenizer, batch_size: int = 16, max_length: int | None = None):
        super().__init__()
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = max_length or model.config.block_size
        self.vocab_size = model.config.vocab_size
        self._device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        """What an empty context is conditioned on: <|endoftext|> for GPT-2's BPE, else id 0, the first character
        of a char vocabulary (what `generate.py` starts an empty prompt from; "\\n" for tinyshakespeare's)."""
        eot = getattr(self.tokenizer, "eot", None)
        return 0 if eot is None else eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        try:
            return self.tokenizer.encode(string)
        except DataError as e:  # a char vocabulary meets a character it never saw
            raise GptlabError(f"tasks: a char-level model cannot score this task's text: {e}") from None

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False, **kwargs):
        """(sum of the continuation's log-probabilities, whether greedy decoding gives the continuation) each."""
        inputs = [self._scored_window(context, continuation) for _, context, continuation in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(inputs[i]))  # similar lengths share a batch
        answers: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            logprobs = self._logprobs([inputs[i] for i in batch])
            for row, i in enumerate(batch):
                answers[i] = self._score(logprobs[row], len(inputs[i]), requests[i][2])
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answers[i])
        return answers

    def _scored_window(self, context: list[int], continuation: list[int]) -> list[int]:
        if len(continuation) > self.max_length:
            raise GptlabError(
                f"tasks: a continuation of {len(continuation)} tokens does not fit the model's "
                f"{self.max_length}-token window"
            )
        return (context + continuation)[-(self.max_length + 1) :][:-1]

    def _logprobs(self, inputs: list[list[int]]) -> torch.Tensor:
        """(B, T, vocab) log-probabilities for right-padded inputs (causal: padding changes no earlier position)."""
        width = max(len(ids) for ids in inputs)
        batch = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, ids in enumerate(inputs):
            batch[row, : len(ids)] = torch.tensor(ids)
        logits, _ = self.model(batch.to(self._device))
        return F.log_softmax(logits[..., : self.vocab_size].float(), dim=-1).cpu()

    @staticmethod
    def _score(logprobs: torch.Tensor, length: int, continuation: list[int]) -> tuple[float, bool]:
        rows = logprobs[length - len(continuation) : length]  # the positions that predict the continuation
        wanted = torch.tensor(continuation)
        greedy = bool((rows.argmax(dim=-1) == wanted).all())
        return float(rows.gather(1, wanted[:, None]).sum()), greedy

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for (string,) in (request.args for request in requests):
            windows = [
                (None, *make_disjoint_window(w))
                for w in get_rolling_token_windows(self.tok_encode(string), self.prefix_token_id, self.max_length, 1)
            ]
            total = sum(logprob for logprob, _ in self._loglikelihood_tokens(windows))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        texts = []
        for context, gen_kwargs in (request.args for request in requests):
            text = self._generate(context, dict(gen_kwargs))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            texts.append(text)
        return texts

    def _generate(self, context: str, gen_kwargs: dict) -> str:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else [s for s in until if s]
        sample = gen_kwargs.get("do_sample", False)
        params = SamplingParams(
            max_new_tokens=int(gen_kwargs.get("max_gen_toks", MAX_GEN_TOKS)),
            temperature=float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0,
            seed=0,  # a sampling task draws the same text every run
            stop=until,
        )
        prompt = self.tok_encode(context) or [self.prefix_token_id]
        # the model's own sliding window crops a prompt longer than block_size from the left
        return TextStream(self.model, self.tokenizer, prompt, params).text()
