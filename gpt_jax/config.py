"""The default configuration: every knob of a run, with a sane default.

Experiment files under `experiments/` call `base_config()` and change what differs, so each one
reads like a table of hyperparameters. Any value can be overridden on the command line, e.g.
`--config.model.n_layer=4`.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = 'lm'  # 'lm' (next-token; distillation with distill.teacher), 'sft', 'classify',
  # or preference tuning: 'reward' (a reward model), 'dpo' or 'ppo'
  c.init_from = ''  # a run's workdir (e.g. an imported HF model): start from its parameters
  c.allow_config_changes = False  # resume a run whose trajectory settings changed (logged)
  c.steps = 1000  # optimizer steps
  c.time_budget_s = 0.0  # > 0: train as many steps as fit this many seconds here (measured
  # first; compilation and evaluation not counted) instead of `steps`
  c.batch_size = 32  # sequences per optimizer step, over all devices and microbatches
  c.grad_accum = 1  # microbatches per optimizer step (batch_size must divide by it)
  c.steps_per_call = 16  # train steps per compiled call: the host works once per call, not step
  c.seq_len = 256
  c.log_every = 10
  c.eval_every = 200
  c.eval_batches = 16  # validation batches per evaluation; 0 = the whole validation split
  c.checkpoint_every = 500
  c.checkpoint_steps = ()  # also save at these steps, never deleted (where cooldowns branch off)
  c.keep_checkpoints = 3

  c.mesh = mesh = ml_collections.ConfigDict()  # device mesh sizes; -1 = the remaining devices
  mesh.data = -1  # data parallel
  mesh.fsdp = 1  # batch and parameters/optimizer state sharded (FSDP / ZeRO-3)
  mesh.tensor = 1  # attention heads, MLP hidden and vocab sharded (Megatron)

  c.model = model = ml_collections.ConfigDict()
  model.vocab_size = 8192  # also the size the tokenizer is trained to
  model.n_layer = 6
  model.n_head = 6
  model.n_kv_head = 6  # < n_head: grouped-query attention; 1: multi-query
  model.n_embd = 384
  model.head_dim = 0  # 0 = n_embd // n_head; set when n_head·head_dim != n_embd (GPT-3 XL)
  model.d_ff = 0  # MLP hidden size; 0 = 4·n_embd (gelu, relu2) or the LLaMA rule (swiglu)
  model.block_size = 1024  # rows of the learned position table
  model.position = 'learned'  # 'learned' (GPT-2) or 'rope' (LLaMA)
  model.rope_theta = 10000.0
  model.norm = 'layernorm'  # 'layernorm' or 'rmsnorm'
  model.norm_eps = 1e-5
  model.mlp = 'gelu'  # 'gelu', 'swiglu' or 'relu2' (squared ReLU, 4·n_embd wide)
  model.qk_norm = False  # RMSNorm each head's queries and keys before attention (OLMo 2, Qwen3)
  model.zero_init_proj = False  # attention-out and MLP-proj kernels start at 0 (modded-nanogpt)
  model.logit_softcap = 0.0  # > 0: logits = c·tanh(logits / c) (Gemma 2); 0 = off
  model.bias = True
  model.tie_embeddings = True
  model.dropout = 0.0
  model.init_std = 0.02
  model.attention = 'auto'  # 'auto' (einsum on CPU, else xla), 'xla'
  # (jax.nn.dot_product_attention), 'einsum', 'cudnn' or 'reference'
  model.sliding_window = 0  # > 0: local banded attention over this many positions
  model.local_layers = 'all'  # with sliding_window: 'all' or 'alternate' (GPT-3: dense, local, ...)
  model.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16'
  model.param_dtype = 'float32'
  model.remat = 'none'  # 'none', 'full' or 'dots' (save matmul outputs only)
  model.scan_layers = False  # nn.scan over layers: one compiled layer, fast compile when deep
  model.quant = quant = ml_collections.ConfigDict()  # set by gpt_jax.quantize, not by hand
  quant.format = ''  # '' (float weights), 'int8', 'int4' or 'nf4': how matmul weights are stored
  quant.group_size = 0  # int4/nf4: input rows sharing one scale (int8: 0 = one per output column)
  quant.zero_point = False  # int4: asymmetric groups, w = (q − z)·s
  quant.embeddings = False  # also the token embedding (and with it the tied head)
  quant.activations = 'none'  # 'none' (weight-only) or 'int8' (per-token dynamic, int8 matmuls)

  c.optim = optim = ml_collections.ConfigDict()
  optim.name = 'adamw'  # or 'muon': Muon on the hidden matrices, AdamW (at lr) on the rest
  optim.lr = 1e-3
  optim.muon_lr = 0.02  # muon: the hidden matrices' peak learning rate (Jordan et al. 2024)
  optim.muon_momentum = 0.95  # muon: Nesterov momentum of the orthogonalised updates
  optim.warmup_steps = 100
  optim.schedule = 'cosine'  # after warmup: 'cosine' decay, or 'wsd' (stable at lr, then decay)
  optim.decay_fraction = 0.2  # wsd: the last fraction of the updates decay
  optim.decay_shape = 'linear'  # wsd: 'linear' or 'sqrt' (1 − sqrt cooldown, Hägele et al. 2024)
  optim.min_lr_ratio = 0.1  # the schedule decays to lr·min_lr_ratio at the last step
  optim.b1 = 0.9
  optim.b2 = 0.95
  optim.eps = 1e-8
  optim.weight_decay = 0.1  # on matrices only; not on norms, biases or embeddings
  optim.grad_clip = 1.0  # global-norm clipping; 0 = off

  c.loss = loss = ml_collections.ConfigDict()
  loss.z_loss = 0.0  # weight of log(Z)² (PaLM), keeps the softmax normaliser near 1

  c.lora = lora = ml_collections.ConfigDict()  # LoRA (Hu et al. 2021): train W + (alpha/rank)·A·B
  lora.rank = 0  # 0 = off (train every weight); > 0 needs init_from (the frozen base)
  lora.alpha = 16.0
  lora.dropout = 0.0  # on the adapters' input
  lora.targets = 'attn'  # 'attn' (query, key, value, out), 'mlp', 'all' or layer names,
  # e.g. 'query,value'
  # Token ids >= this train their embedding rows (and untied head columns) in full beside the
  # adapters (PEFT's trainable_token_indices): how a vocabulary expansion's new pieces learn
  # under LoRA. -1: the new pieces of a base made by gpt_jax.expand_vocab, none for other bases;
  # 0: none.
  lora.trainable_tokens_from = -1

  c.distill = distill = ml_collections.ConfigDict()
  distill.teacher = ''  # a finished run's workdir: train against its outputs (same tokenizer)
  distill.alpha = 0.5  # loss = alpha·T²·KL(teacher ‖ student) + (1 − alpha)·CE
  distill.alpha_final = -1.0  # >= 0: alpha moves linearly to this by the last step
  distill.temperature = 2.0
  distill.reverse = False  # KL(student ‖ teacher) instead
  distill.top_k = 0  # > 0: only the teacher's k largest logits, renormalised

  c.data = data = ml_collections.ConfigDict()
  data.corpus = 'shakespeare'  # 'shakespeare' or paths/dirs/globs (comma-separated) of
  # .txt/.md/.jsonl[.gz] and .parquet
  data.text_field = 'text'  # the field (column) holding the text in .jsonl (.parquet) files
  data.tokenizer = ''  # '' = train a BPE tokenizer on the training split; or a .model file
  data.val_fraction = 0.05
  data.max_document_chars = 65536  # longer documents (a book, a one-file corpus) are cut ...
  data.piece_chars = 8192  # ... into pieces of at most this many characters, at blank lines
  data.url_field = 'url'  # the field holding a .jsonl row's URL (for data.blocked_hosts)
  data.bad_lines = 'stop'  # a .jsonl line that is not JSON: 'stop' (with its line) or 'skip'
  # (counted)
  # Cleaning (gpt_jax.clean), in this order; each stage counted in the log and the manifest.
  data.min_chars = 200  # quality filter: shorter documents are dropped
  data.min_letter_fraction = 0.6  # quality filter: documents with fewer letters are dropped
  data.gopher_rules = False  # Gopher's quality rules (Rae et al. 2021) and C4's punctuation rule
  data.script = ''  # e.g. 'latin', 'japanese': keep documents with at least ...
  data.min_script_fraction = 0.0  # ... this fraction of their letters in that script
  data.blocked_hosts = ''  # host names (comma-separated) or a file of them: rows whose URL is there
  data.exact_dedup = True  # drop exact copies of an earlier document
  data.near_dedup = False  # drop near-duplicates: MinHash LSH (datasketch, extra '.[data]')
  data.near_dedup_threshold = 0.8  # Jaccard similarity of word n-grams that makes a near-duplicate
  data.near_dedup_ngram = 5
  data.near_dedup_num_perm = 128  # MinHash permutations
  data.scrub_pii = True  # replace e-mail addresses, phone and card numbers, IP addresses
  data.num_epochs = 1  # passes over the training split that `steps` may use
  data.cache_dir = ''  # where prepared data is kept; '' = ~/.cache/gpt_jax
  # Preparation at scale (gpt_jax.prepare)
  data.workers = 0  # processes that clean and tokenize; 0 = one per core (one per 16 MB of input)
  # Preparation on datatrove's executors (python -m gpt_jax.cluster_prepare), de-duplicating
  # across the whole corpus; training reads what it prepared like prepare's own.
  data.cluster = cluster = ml_collections.ConfigDict()
  cluster.executor = 'local'  # 'local' (this machine, or several: local_tasks), 'slurm', 'ray'
  cluster.tasks = 4  # tasks that read and tokenize, each a run of the sorted corpus files
  cluster.workers = 0  # tasks at once (local, ray); 0 = all of them
  cluster.local_tasks = -1  # local on several machines: this one runs tasks local_rank_offset ..
  cluster.local_rank_offset = 0  # .. local_rank_offset + local_tasks - 1 (-1: all tasks)
  cluster.slurm_partition = ''
  cluster.slurm_time = '2:00:00'  # each task's time limit on SLURM
  data.tokenizer_sentences = 2_000_000  # lines the tokenizer trains on, sampled from train
  data.shard_tokens = 1 << 24  # tokens per .npy file of a prepared split
  data.shard = ''  # 'i/N': python -m gpt_jax.prepare runs as machine i of N of cluster_prepare

  data.tasks = ''  # fine-tuning: task or preference files, directories or globs (comma-separated)
  data.held_out_tasks = ''  # their held-out instances, in tasks of the same names; '' = split off
  # (objective classify: one task file in data.tasks, its held-out file in data.held_out_tasks)

  c.sft = sft = ml_collections.ConfigDict()  # objective 'sft': instruction tuning
  sft.shots = 2  # positive examples in each prompt (Tk-Instruct: 2)
  sft.held_out = 0.1  # without data.held_out_tasks: the fraction of each task's instances held out
  sft.eval_instances = 100  # held-out instances per task scored in sft_report.md; 0 = all

  c.task = task = ml_collections.ConfigDict()  # objective 'classify': GPT-1 task fine-tuning
  task.kind = ''  # '' = from the file's keys; else one of task_inputs.KINDS (must match them)
  task.labels = ()  # the label set, filled in from the training file (saved so the run reloads)
  task.shots = (0, 3)  # the base model's prompted baselines in finetune_report.md
  task.eval_instances = 200  # held-out examples scored in finetune_report.md; 0 = all

  c.finetune = finetune = ml_collections.ConfigDict()
  finetune.lm_weight = 0.5  # λ of GPT-1's L3 = L2 (task) + λ·L1 (language modelling); 0 = off

  c.preference = preference = ml_collections.ConfigDict()  # objectives reward, dpo and ppo
  preference.held_out = 0.1  # without data.held_out_tasks: the fraction of prompts held out

  c.dpo = dpo = ml_collections.ConfigDict()  # Rafailov et al. 2023
  dpo.beta = 0.1  # β: the strength of the implicit KL constraint to the reference
  dpo.reference = ''  # the frozen reference policy's run; '' = init_from

  c.ppo = ppo = ml_collections.ConfigDict()  # InstructGPT's RL step (Ouyang et al. 2022)
  ppo.reward_model = ''  # an objective=reward run (required)
  ppo.reference = ''  # the frozen SFT policy of the KL penalty; '' = init_from
  ppo.kl_coef = 0.05  # β of the per-token penalty −β·(log π − log π_ref)
  ppo.max_new_tokens = 32  # the longest sampled answer (rollouts stop at EOS)
  ppo.temperature = 1.0  # of the rollouts
  ppo.epochs = 4  # passes of clipped updates over each batch of rollouts
  ppo.minibatches = 4  # updates per pass (batch_size must divide by minibatches × grad_accum)
  ppo.clip = 0.2  # ε of the clipped surrogate
  ppo.value_clip = 0.2  # the value's clipping range around its rollout value
  ppo.value_coef = 0.1  # weight of the value loss
  ppo.entropy_coef = 0.0  # weight of the entropy bonus
  ppo.gamma = 1.0  # discount
  ppo.lam = 0.95  # λ of GAE (Schulman et al. 2016)
  ppo.ptx_coef = 0.0  # γ of PPO-ptx: γ·L_LM on data.corpus batches (0 = off)

  c.sample = sample = ml_collections.ConfigDict()
  sample.num = 3  # sample lines printed after training; 0 = none
  sample.max_tokens = 64
  sample.temperature = 0.8
  sample.prompt = ''
  return c
