"""The report's words, in English and Chinese (REPORT.md / REPORT.zh.md): one dict per language,
the same keys in both (tests/test_report.py checks that); the layout of the replaced system's
report (`REPLACED_TEXT`, `report --replaced-system`) shares the headings they have in common; and
how both write a drop and a removal set (`pct`, `fmt_set`, from blockprune.analysis.format)."""


from ..analysis.format import cell, fmt_set, pct  # noqa: F401  (how the reports write figures; re-exported)


TEXT = {
    "en": {
        "title": "Block pruning recommendations: {model}",
        "overview": "Overview",
        "overview_text": ("{method} search over the {n} blocks of `{model}`; {c} candidate sets, every one scored on all "
                          "{t} tasks with the same samples. Each task is ranked by a score that uses every sample's full "
                          "signal (column 'ranked by'): a drop is its relative loss of quality vs the dense model "
                          "(1 - q/q_dense; q = expected accuracy p_gold, accuracy, or the per-token probability exp(-NLL) "
                          "behind perplexity and gold_logprob), and for kl the KL to the dense model itself (nats/token, "
                          "on the same scale for small values). Tables show the ranked drop and, in brackets, the drop of "
                          "the thresholded metric papers report (acc, exact_match). ± is the sample std over tasks "
                          "(ddof=1); 95% intervals come from a paired bootstrap over samples ({b} replicates)."),
        "tasks": "Tasks", "task": "task", "metric": "metric", "dense": "dense", "n": "samples", "ranked": "ranked by",
        "best": "Best set per number of removed blocks", "remove_k": "Remove {k} block{s}",
        "choice": "Best choice: remove {set}", "mean": "Mean drop", "ci": "95% interval",
        "range": "Range over tasks", "per_task": "Per task", "top5": "Top 5",
        "vs": "Best vs runner-up {r}: difference {d} (95% interval {lo} to {hi}), {verdict}.",
        "sig": "significant", "notsig": "not significant: treat them as equivalent",
        "none_k": "No candidate of this size was scored.",
        "step": "Stepwise path", "step_text": "Step k is the best set of size k that contains step k-1's set.",
        "incr": "incremental", "jump": "no scored set extends the previous step: best of this size taken",
        "rec": "Recommendations", "conservative": "Conservative", "balanced": "Balanced", "aggressive": "Aggressive",
        "rule": "Rule", "no_rec": "No set meets this rule.",
        "lat_title": "Measured speed", "lat_level": "recommendation", "lat_speedup": "measured speedup",
        "lat_ideal": "ideal L/(L-k)", "lat_prefill": "prefill speedup", "lat_none": "not measured",
        "lat_text": ("Decode speedup vs the dense model (per-token latency, greedy, with the KV cache: median over runs of the "
                     "dense/pruned ratio of adjacent runs, min–max in brackets; {backend}, "
                     "batch {batch}, prompt {prompt} + {gen} tokens, {reps} interleaved runs, {device}) from `latency.json`; "
                     "`plots/drop_vs_speedup.png` shows mean drop against it with the Pareto front of the sets that pass "
                     "the per-task guard (sets failing it hollow, never on the front)."),
        "rule_conservative": "the largest k with a set whose every task's upper 95% bound is <= {t}",
        "rule_balanced": ("the largest k with a set whose one-sided 95% upper bound of the mean drop is <= {t} and no "
                          "task's lower 95% bound above {t}"),
        "rule_aggressive": ("the largest k with a set whose one-sided 80% upper bound of the mean drop is <= {t} and no "
                            "task's lower 95% bound above {t}"),
        "guard": ("Every rule first requires that no task's own drop is significantly above the tolerance, so a gain on "
                  "one task cannot hide a loss on another."),
        "task_ci": "per task [95% interval]",
        "guard_fail": ("✗ fails the per-task guard: {tasks} significantly above {t}, so no recommendation can "
                       "take this set (sets marked ✗ below likewise)"),
        "decide": "What the samples decide",
        "decide_text": ("For the best set of each size, every task's drop against the tolerance {t}: within (upper 95% bound "
                        "<= {t}), above (lower bound > {t}) or undecided. For an undecided task: how many samples would "
                        "make its interval decisive if the drop stayed where it is (from its paired bootstrap variance)."),
        "v_within": "within", "v_above": "above", "v_undecided": "undecided",
        "need": "needs about {m} samples (has {n}{avail})", "need_avail": ", {a} available",
        "need_inf": "sits on the tolerance: no sample size decides it",
        "cannot": "The samples cannot decide whether {set} is within {t}: {items}.",
        "held": "Held-out check", "held_text": ("The recommended sets and the dense model re-scored on samples of each task "
                                                 "that the search did not use ({where}): search → held-out drop, the "
                                                 "held-out one with its own paired-bootstrap 95% interval. A "
                                                 "recommendation is confirmed when its rule holds on the held-out "
                                                 "samples."),
        "held_none": "Not run yet: `blockprune validate {out}` re-scores the recommendations on unused samples.",
        "held_search": "search", "held_out": "held-out",
        "held_v_confirmed": "confirmed", "held_v_contradicted": "contradicted", "held_v_undecided": "undecided",
        "held_v_unknown": "not checked",
        "held_confirmed": "its rule ({rule}) holds on the held-out samples.",
        "held_contradicted": "on the held-out samples, {what}: significantly above the tolerance {t}.",
        "held_undecided": ("the held-out samples are too few to confirm it ({what}: not yet within {t}); "
                           "`blockprune validate {out} --samples N` re-checks on more."),
        "held_unknown": "this validation.json predates the held-out intervals: rerun `blockprune validate {out}`.",
        "held_above": "above", "held_below": "below",
        "held_shift": ("⚠ above / below: the held-out drop differs from the search's by more than the noise of both "
                       "samples allows (more than 1.96 standard errors of the difference of two independent "
                       "estimates); above: the search's samples were easy for this set, its figures optimistic."),
        "held_plain": ("{set}: {task} perplexity {dense} → {ppl} ({rise}) on {n} held-out windows, measured by plain "
                       "transformers with the blocks deleted"),
        "notes": "Notes", "warning": "Warning",
        "findings": "Key findings", "blocks": "Single-block removal",
        "partial_note": ("† dropped by racing after {n} samples per task (estimate on those samples; the exact search "
                         "`--exact` scores every set on all samples). {m} sets were dropped by racing in all."),
        "block": "block", "rank": "rank", "plots": "Plots", "files": "File locations", "usage": "How to reproduce",
        "f_critical": "Blocks that must never go: {items}.", "f_critical_none": "No single block is critical (no lower 95% bound >= {c}).",
        "f_crit_item": "removing block {b} costs {d} (95% interval {lo} to {hi})",
        "f_safe": "Safest single removals: {items}.",
        "f_combo_yes": "Combinations beat the best single removal (block {b}): {sets}.",
        "f_combo_no": "No combination beats the best single removal (block {b}).",
        "f_inter": "Interactions: {n} of {m} multi-block sets differ from the sum of their single drops (95% interval excludes 0){items}.",
        "f_rank": "Agreement of block importance across tasks (Spearman of single-block drops): mean {m}; {pairs}.",
        "f_grow_yes": "Incremental drops grow along the stepwise path: {inc}.",
        "f_grow_no": "Incremental drops do not grow monotonically along the stepwise path: {inc}.",
        "one_task": "Only one task: std over tasks and rank agreement are not defined.",
        "repro": "Regenerate this report from the store (no re-scoring) with `blockprune report {out}`; the search itself:",
        "cluster": "Where it was scored",
        "cluster_session": ("Session {i} ({started}, Ray at {address}): {units} units on {n} workers; block tokens "
                            "per second of each worker's busy time: {rates}."),
        "cluster_retried": ("{r} unit(s) retried on another worker after {lost} worker(s) died mid-unit ({who}); a unit "
                            "is stored only when its result arrives whole, so nothing was lost or stored twice."),
        "cluster_none": "No unit was retried.",
        "heal": "Healing",
        "heal_overview": "Every candidate is scored healed (see Healing).",
        "heal_tag": "healed",
        "gen_faster": ("Generation falls faster than multiple choice: removing {set} (k = {k}), {task} drops {drop:.1%} "
                       "(95% interval {lo:.1%} – {hi:.1%}) while the worst multiple-choice task, {mc}, drops {mc_drop:.1%} "
                       "(at most {mc_hi:.1%}); generation falls significantly faster at k = {ks}. Multiple choice alone would "
                       "overstate what survives."),
        "gen_not_faster": ("Generation does not fall significantly faster than multiple choice for the best sets of any k "
                           "(the generative drop's interval reaches the multiple-choice one)."),
        "gen_samples": "What the pruned models say",
        "gen_samples_text": "The first samples of each generative task, greedy, cut at the stop strings: the dense model's "
                            "output beside each recommended set's (every sample's is in results.jsonl, field `generated`).",
        "heal_text": ("Every candidate of this run is scored **healed** (`--heal {method}`): each removed run of blocks gets "
                      "a closed-form linear map (ridge {ridge} times the mean eigenvalue), fitted by least squares on the "
                      "dense model's activations and folded into the MLP output projection of the block before the run, "
                      "so a healed set has the plain pruned model's modules and speed."),
        "heal_cal": ("Calibration: {n} windows of {window} tokens from `{spec}` ({tokens} tokens fitted), disjoint from "
                     "every window the search scores."),
        "heal_cal_mix": ("Calibration (the default mix): {n} windows of {window} tokens from `{spec}` and {tasks}, "
                         "{tokens} tokens fitted; disjoint from every sample the search scores and from the held-out "
                         "check's (a text alone costs multiple choice: docs/heal.md)."),
        "heal_cal_task": "{n} unscored samples of {task}",
        "heal_cal_none": "Calibration: not recorded in run.json.",
        "heal_plain_item": "after {b}: {why}",
        "heal_plain_blocks": ("Runs that stay plain (scored as plain deletion): {items}; a run starting at block 0 always "
                              "does (no block before it)."),
        "heal_plain_none": "Every block can fold a map: only a run starting at block 0 stays plain (no block before it).",
        "heal_best": "best healed set", "heal_mean": "healed mean drop [95% interval]",
        "heal_set_plain": "(scored plain: no run took a map)", "heal_set_partly_plain": "(partly plain)",
        "heal_same": "the same set plain", "heal_best_plain": "best plain set", "heal_its": "its mean drop [95% interval]",
        "heal_table_note": ("Plain columns: the plain (unhealed) search in `plain/`, on the same tasks and samples; — where "
                            "it did not score the set."),
        "heal_no_plain": "No plain run to compare with (`{out}/plain` is absent: searched with --no-plain-baseline?).",
        "heal_plain_tasks": "`{out}/plain` is not compared: its tasks differ from this run's.",
        "heal_plain_samples": "`{out}/plain` is not compared: its tasks score other samples than this run's.",
        "heal_plain_empty": "`{out}/plain` is not compared: no candidate of it is scored on every task yet.",
        "heal_plain_bad": "`{out}/plain` is not compared: {why}",
        "heal_more": ("Healing removes {K} block{Ks} within the tolerance {t} where plain deletion removes {J} (balanced "
                      "advice: healed {healed}, plain {plain})."),
        "heal_not_more": ("Healing removes {K} block{Ks} within the tolerance {t}, plain deletion {J} (balanced advice: healed "
                          "{healed}, plain {plain}): healing does not remove more here, because {why}."),
        "heal_bind_guard": ("at k = {k} the best healed set {set} fails the per-task guard: {task}'s drop is {d} (95% lower "
                            "bound {lo}, above {t})"),
        "heal_bind_mean": ("at k = {k} the best healed set {set} has mean drop {m} with one-sided 95% upper bound {u}, above "
                           "{t}; its largest task drop is {task} at {d}"),
        "heal_bind_none": "the search scored no healed set of {k} blocks (--max-remove)",
        "f_plain": "the plain (unhealed) search the Healing section compares with (a run directory of its own)",
        "heal_held_ppl": ("{set} healed: {task} perplexity {dense} → {ppl} ({rise}); deleted without its maps {plain} "
                          "({plain_rise}); {n} held-out windows, measured by plain transformers on the folded, pruned model"),
        "heal_held_unseen": ("On a text the healing never saw (`{spec}`, {n} windows{searched}), by plain transformers: "
                             "dense perplexity {dense}; {items}."),
        "heal_held_unseen_item": "{set} healed {healed} ({rise}), without its maps {plain} ({plain_rise})",
        "heal_held_searched": "; a search task's text",
        "f_files": {"REPORT": "this report", "pruning_recommendations.json": "recommendations, stepwise path, key findings",
                    "cross_dataset_analysis.json": "every candidate: scores, drops, mean ± std, 95% interval; single-block table",
                    "results.jsonl": "the store: per-sample scores of every (candidate, task)", "run.json": "settings and versions"},
    },
    "zh": {
        "title": "Block 剪枝建议：{model}",
        "overview": "概述",
        "overview_text": ("对 `{model}` 的 {n} 个 block 进行 {method} 搜索；共 {c} 个候选组合，每个组合都在全部 {t} 个任务的同一批样本上评估。"
                          "每个任务按利用每个样本完整信号的分数排序（“排序依据”列）：下降指其相对于完整模型的质量相对损失"
                          "（1 - q/q_dense；q 为期望准确率 p_gold、准确率，或困惑度与 gold_logprob 背后的每 token 概率 exp(-NLL)），"
                          "kl 任务的下降即相对完整模型的 KL 本身（nats/token，小值时与相对损失同一尺度）。表中给出排序分数的下降，"
                          "括号内为论文常报告的阈值指标（acc、exact_match）的下降。± 为跨任务的样本标准差（ddof=1）；"
                          "95% 区间来自对样本的配对 bootstrap（{b} 次重采样）。"),
        "tasks": "任务", "task": "任务", "metric": "指标", "dense": "完整模型", "n": "样本数", "ranked": "排序依据",
        "best": "独立最优策略", "remove_k": "移除 {k} 个 Block{s}",
        "choice": "最佳选择：移除 {set}", "mean": "平均下降", "ci": "95% 区间",
        "range": "跨任务范围", "per_task": "各任务", "top5": "Top 5 选择",
        "vs": "最佳与次佳 {r} 之差：{d}（95% 区间 {lo} 至 {hi}），{verdict}。",
        "sig": "差异显著", "notsig": "差异不显著，可视为等价",
        "none_k": "该数量下没有评估过的候选。",
        "step": "逐步剪枝策略", "step_text": "第 k 步为包含第 k-1 步组合的最佳 k-block 组合。",
        "incr": "增量下降", "jump": "没有评估过的组合包含上一步的组合：取该数量下的最佳组合",
        "rec": "建议", "conservative": "保守策略", "balanced": "平衡策略", "aggressive": "激进策略",
        "rule": "规则", "no_rec": "没有组合满足该规则。",
        "lat_title": "实测速度", "lat_level": "建议", "lat_speedup": "实测加速比",
        "lat_ideal": "理想值 L/(L-k)", "lat_prefill": "预填充加速比", "lat_none": "未测量",
        "lat_text": ("相对完整模型的解码加速比（每个 token 的延迟，贪心解码，使用 KV cache：相邻运行的完整/剪枝比值在各次运行上的中位数，"
                     "括号内为最小–最大；{backend}，batch {batch}，"
                     "提示 {prompt} + 生成 {gen} 个 token，{reps} 次交替运行，{device}），数据来自 `latency.json`；"
                     "`plots/drop_vs_speedup.png` 展示平均下降与实测加速比的关系，并标出通过逐任务检查的组合的 Pareto 前沿"
                     "（未通过的组合画为空心，不进入前沿）。"),
        "rule_conservative": "存在每个任务的 95% 区间上界都 <= {t} 的组合的最大 k",
        "rule_balanced": "存在平均下降单侧 95% 上界 <= {t}、且没有任务的 95% 区间下界高于 {t} 的组合的最大 k",
        "rule_aggressive": "存在平均下降单侧 80% 上界 <= {t}、且没有任务的 95% 区间下界高于 {t} 的组合的最大 k",
        "guard": "每条规则都先要求没有任何任务自身的下降显著高于容差，因此一个任务上的提升无法掩盖另一个任务上的损失。",
        "task_ci": "各任务 [95% 区间]",
        "guard_fail": "✗ 未通过逐任务检查：{tasks} 显著高于 {t}，任何建议都不会采用该组合（下表中标 ✗ 的组合同样如此）",
        "decide": "样本能判定什么",
        "decide_text": ("对每个数量下的最佳组合，逐个任务将下降与容差 {t} 比较：之内（95% 上界 <= {t}）、之上（下界 > {t}）或无法判定。"
                        "对无法判定的任务：若下降保持不变，需要多少样本才能使区间得出结论（由配对 bootstrap 方差估算）。"),
        "v_within": "之内", "v_above": "之上", "v_undecided": "无法判定",
        "need": "约需 {m} 个样本（现有 {n}{avail}）", "need_avail": "，可用 {a}",
        "need_inf": "恰在容差上：任何样本量都无法判定",
        "cannot": "样本无法判定 {set} 是否在 {t} 之内：{items}。",
        "held": "留出样本检验", "held_text": ("用搜索未使用的各任务样本重新评估推荐组合与完整模型（{where}）：搜索 → 留出下降，"
                                           "留出值附其自身的配对 bootstrap 95% 区间。推荐的规则在留出样本上成立即为确认。"),
        "held_none": "尚未运行：`blockprune validate {out}` 会在未使用的样本上重新评估推荐组合。",
        "held_search": "搜索", "held_out": "留出",
        "held_v_confirmed": "确认", "held_v_contradicted": "被否定", "held_v_undecided": "无法判定",
        "held_v_unknown": "未检验",
        "held_confirmed": "其规则（{rule}）在留出样本上成立。",
        "held_contradicted": "在留出样本上，{what}：显著高于容差 {t}。",
        "held_undecided": "留出样本太少，无法确认（{what}：尚未确定在 {t} 之内）；`blockprune validate {out} --samples N` 可用更多样本复查。",
        "held_unknown": "该 validation.json 早于留出区间的引入：请重新运行 `blockprune validate {out}`。",
        "held_above": "偏高", "held_below": "偏低",
        "held_shift": ("⚠ 偏高 / 偏低：留出下降与搜索下降之差超出两组样本噪声所允许的范围（超过两个独立估计之差的 1.96 "
                       "个标准误）；偏高表示搜索样本对该组合偏容易，其数字偏乐观。"),
        "held_plain": "{set}：{task} 困惑度 {dense} → {ppl}（{rise}），{n} 个留出窗口，用删除 block 后的普通 transformers 测得",
        "notes": "说明", "warning": "警告",
        "findings": "关键发现", "blocks": "单个 Block 移除",
        "partial_note": ("† 在每个任务 {n} 个样本后被 racing 淘汰（基于这些样本的估计；精确搜索 `--exact` 会在全部样本上评估每个组合）。"
                         "共有 {m} 个组合被 racing 淘汰。"),
        "block": "block", "rank": "排名", "plots": "图表", "files": "文件位置", "usage": "使用方法",
        "f_critical": "绝对不能移除的 blocks：{items}。", "f_critical_none": "没有关键的单个 block（没有 95% 区间下界 >= {c}）。",
        "f_crit_item": "移除 Block {b} 会导致下降 {d}（95% 区间 {lo} 至 {hi}）",
        "f_safe": "最安全的单个移除：{items}。",
        "f_combo_yes": "组合移除优于最佳单 block 移除（Block {b}）：{sets}。",
        "f_combo_no": "没有组合优于最佳单 block 移除（Block {b}）。",
        "f_inter": "交互效应：{m} 个多 block 组合中有 {n} 个的下降与其单 block 下降之和不同（95% 区间不含 0）{items}。",
        "f_rank": "各任务间 block 重要性的一致性（单 block 下降的 Spearman 相关）：平均 {m}；{pairs}。",
        "f_grow_yes": "逐步移除的增量影响递增：{inc}。",
        "f_grow_no": "逐步移除的增量影响并非单调递增：{inc}。",
        "one_task": "只有一个任务：跨任务标准差和排名一致性无定义。",
        "repro": "从存储重新生成本报告（不重新评估）：`blockprune report {out}`；搜索本身：",
        "cluster": "计算资源",
        "cluster_session": "第 {i} 次运行（{started}，Ray 地址 {address}）：{n} 个 worker 共完成 {units} 个工作单元；各 worker 忙碌时间内每秒 block token 数：{rates}。",
        "cluster_retried": "有 {lost} 个 worker 在工作单元中途失效（{who}），{r} 个工作单元已在其他 worker 上重跑；工作单元只有在结果完整返回后才会写入存储，因此没有丢失或重复记录。",
        "cluster_none": "没有工作单元需要重跑。",
        "heal": "修复",
        "heal_overview": "每个候选都以修复后的模型评估（见“修复”一节）。",
        "heal_tag": "已修复",
        "gen_faster": ("生成比多项选择下降得更快：移除 {set}（k = {k}）时，{task} 下降 {drop:.1%}（95% 区间 {lo:.1%} – {hi:.1%}），"
                       "而下降最多的多项选择任务 {mc} 只下降 {mc_drop:.1%}（至多 {mc_hi:.1%}）；k = {ks} 时均如此。只看多项选择会高估剪枝后保留的能力。"),
        "gen_not_faster": "对每个 k 的最佳组合，生成任务的下降都没有显著快于多项选择（两者的区间相交）。",
        "gen_samples": "剪枝后的模型生成了什么",
        "gen_samples_text": "每个生成任务的前几个样本（贪心解码，在停止串处截断）：稠密模型的输出与各推荐组合的输出并列"
                            "（所有样本见 results.jsonl 的 `generated` 字段）。",
        "heal_text": ("本次运行的每个候选都以**修复后**的模型评估（`--heal {method}`）：每段被移除的连续 block 都配有一个闭式线性映射"
                      "（ridge 为 MᵀM 平均特征值的 {ridge} 倍），在完整模型的激活上用最小二乘拟合，并折叠进该段之前那个 block 的 "
                      "MLP 输出投影，因此修复后的组合与普通剪枝模型的模块和速度完全相同。"),
        "heal_cal": "校准数据：来自 `{spec}` 的 {n} 个 {window} token 窗口（拟合 {tokens} 个 token），与搜索评估的所有窗口都不重叠。",
        "heal_cal_mix": ("校准数据（默认混合）：来自 `{spec}` 的 {n} 个 {window} token 窗口，以及{tasks}，共拟合 {tokens} 个 token；"
                         "与搜索评估的样本和留出检验的样本都不重叠（只用文本会损害多项选择：见 docs/heal.md）。"),
        "heal_cal_task": "{task} 的 {n} 个未评估样本",
        "heal_cal_none": "校准数据：run.json 中没有记录。",
        "heal_plain_item": "{b} 之后：{why}",
        "heal_plain_blocks": "保持普通删除（按未修复评估）的连续段：{items}；从 block 0 开始的段也总是如此（前面没有 block）。",
        "heal_plain_none": "每个 block 都能折叠映射：只有从 block 0 开始的段保持普通删除（前面没有 block）。",
        "heal_best": "修复后最佳组合", "heal_mean": "修复后平均下降 [95% 区间]",
        "heal_set_plain": "（按未修复评估：没有段得到映射）", "heal_set_partly_plain": "（部分未修复）",
        "heal_same": "同一组合未修复", "heal_best_plain": "未修复最佳组合", "heal_its": "其平均下降 [95% 区间]",
        "heal_table_note": "未修复的各列来自 `plain/` 中的普通（未修复）搜索，任务与样本相同；— 表示该搜索未评估此组合。",
        "heal_no_plain": "没有可比较的普通运行（`{out}/plain` 不存在：是否使用了 --no-plain-baseline？）。",
        "heal_plain_tasks": "未与 `{out}/plain` 比较：其任务与本次运行不同。",
        "heal_plain_samples": "未与 `{out}/plain` 比较：其任务评估的样本与本次运行不同。",
        "heal_plain_empty": "未与 `{out}/plain` 比较：其中还没有在全部任务上评估完的候选。",
        "heal_plain_bad": "未与 `{out}/plain` 比较：{why}",
        "heal_more": "在容差 {t} 之内，修复可移除 {K} 个 block，而普通删除只能移除 {J} 个（平衡策略：修复 {healed}，普通 {plain}）。",
        "heal_not_more": ("在容差 {t} 之内，修复可移除 {K} 个 block，普通删除 {J} 个（平衡策略：修复 {healed}，普通 {plain}）："
                          "此处修复没有多移除，因为{why}。"),
        "heal_bind_guard": "k = {k} 时修复后最佳组合 {set} 未通过逐任务检查：{task} 的下降为 {d}（95% 下界 {lo}，高于 {t}）",
        "heal_bind_mean": "k = {k} 时修复后最佳组合 {set} 的平均下降为 {m}，单侧 95% 上界 {u} 高于 {t}；下降最大的任务是 {task}（{d}）",
        "heal_bind_none": "搜索没有评估 {k} 个 block 的修复组合（--max-remove）",
        "f_plain": "“修复”一节用于比较的普通（未修复）搜索（独立的运行目录）",
        "heal_held_ppl": ("{set} 修复后：{task} 困惑度 {dense} → {ppl}（{rise}）；不加映射直接删除为 {plain}（{plain_rise}）；"
                          "{n} 个留出窗口，用普通 transformers 在折叠并剪枝后的模型上测得"),
        "heal_held_unseen": "在修复从未见过的文本上（`{spec}`，{n} 个窗口{searched}），用普通 transformers 测得：完整模型困惑度 {dense}；{items}。",
        "heal_held_unseen_item": "{set} 修复后 {healed}（{rise}），不加映射 {plain}（{plain_rise}）",
        "heal_held_searched": "；也是某个搜索任务的文本",
        "f_files": {"REPORT": "本报告", "pruning_recommendations.json": "推荐结果、逐步路径、关键发现",
                    "cross_dataset_analysis.json": "全部候选：分数、下降、均值 ± 标准差、95% 区间；单 block 表",
                    "results.jsonl": "存储：每个（候选, 任务）的逐样本分数", "run.json": "设置与版本"},
    },
}

# The replaced system's report layout (its own wording in zh, an English rendering in en); the
# headings it shares with blockprune's report come from TEXT.
REPLACED_TEXT = {
    "zh": {
        "overview_text": ("本文档提供了基于跨数据集 beam search 实验的 block 剪枝建议。根据要移除的 block 数量，提供了两种策略：\n"
                          "1. **独立最优策略**：每个数量级别的最佳组合（不考虑累积）\n"
                          "2. **逐步剪枝策略**：基于前一步结果逐步添加要移除的 blocks（贪心方法）"),
        "datasets_line": "数据集（{n} 个）：{names}",
        "independent": "独立最优策略", "remove_k": "移除 {k} 个 Block{s}",
        "best": "最佳选择：移除 {what}", "choice": "选择：移除 {what}",
        "mean_drop": "平均准确率下降", "n": "测试数据集数", "n_all": "{n} 个（所有数据集）", "n_some": "{n} 个",
        "mean_acc": "平均准确率", "datasets": "数据集", "top5": "Top 5 选择", "note": "注意",
        "none_k": "该数量下没有在至少 2 个数据集上测试且平均下降非负的组合。",
        "stepwise": "逐步剪枝策略（推荐）",
        "stepwise_text": "这种方法基于贪心策略，每一步都基于前一步的结果选择下一个要移除的 block。",
        "step": "Step {k}: 移除 {k} 个 Block{s}", "cum": "累积准确率下降", "inc": "增量下降", "inc_from": "（从 Step {p}）",
        "jump": "没有包含 Step {p} 组合的候选，取移除 {k} 个 blocks 的独立最优",
        "conservative": "保守策略（推荐用于生产环境）", "aggressive": "激进策略（追求更高压缩率）",
        "balanced": "平衡策略", "only": "只移除 {what}", "remove": "移除 {what}", "no_rec": "没有满足条件的组合。",
        "f_recs": "推荐结果", "f_full": "完整分析", "f_report": "本报告",
        "usage": "使用方法", "u_gen": "# 生成推荐", "u_view": "# 查看推荐结果",
        "ours": "blockprune 规则的结论",
        "ours_partial": "以下参考结论只基于部分数据集：",
        "ours_none_partial": "参考系统的所有结论都基于全部数据集。",
        "ours_table": "| k | 全部数据集上的最佳组合 | 平均下降 ± 样本标准差 | 95% 区间 | 全部数据集上评估的组合数 |",
        "rests": "{where}：{set} 只基于 {n}/{N} 个数据集（缺少：{missing}）",
    },
    "en": {
        "overview_text": ("This document gives block pruning recommendations based on cross-dataset beam search experiments. "
                          "Depending on how many blocks are to be removed, two strategies are given:\n"
                          "1. **Independent best strategy**: the best combination for each number of removed blocks "
                          "(not cumulative)\n"
                          "2. **Stepwise pruning strategy**: add blocks to remove step by step, building on the previous "
                          "step's result (greedy)"),
        "datasets_line": "Datasets ({n}): {names}",
        "independent": "Independent best strategy", "remove_k": "Remove {k} Block{s}",
        "best": "Best choice: remove {what}", "choice": "Choice: remove {what}",
        "mean_drop": "Mean accuracy drop", "n": "Datasets tested", "n_all": "{n} (all datasets)", "n_some": "{n}",
        "mean_acc": "Mean accuracy", "datasets": "Datasets", "top5": "Top 5 choices", "note": "Note",
        "none_k": "No set of this size was tested on at least 2 datasets with a non-negative mean drop.",
        "stepwise": "Stepwise pruning strategy (recommended)",
        "stepwise_text": "This approach is greedy: each step picks the next block to remove based on the previous step's result.",
        "step": "Step {k}: Remove {k} Block{s}", "cum": "Cumulative accuracy drop", "inc": "Incremental drop",
        "inc_from": " (from Step {p})",
        "jump": "no candidate contains Step {p}'s set; the independent best for {k} blocks is taken",
        "conservative": "Conservative strategy (recommended for production)",
        "aggressive": "Aggressive strategy (for higher compression)", "balanced": "Balanced strategy",
        "only": "Remove only {what}", "remove": "Remove {what}", "no_rec": "No set meets this rule.",
        "f_recs": "Recommendations", "f_full": "Full analysis",
        "f_report": "This report",
        "usage": "Usage", "u_gen": "# Generate the recommendations", "u_view": "# View the recommendations",
        "ours": "What blockprune's rules say",
        "ours_partial": "These reference conclusions rest on only some of the datasets:",
        "ours_none_partial": "Every reference conclusion rests on all datasets.",
        "ours_table": "| k | best set scored on all datasets | mean drop ± sample std | 95% interval | sets scored on all datasets |",
        "rests": "{where}: {set} rests on {n}/{N} datasets (missing: {missing})",
    },
}
for _lang, _words in REPLACED_TEXT.items():
    _words.update({"overview": TEXT[_lang]["overview"], "recs": TEXT[_lang]["rec"], "findings": TEXT[_lang]["findings"],
                   "files": TEXT[_lang]["files"]})
del _lang, _words


def cluster_lines(sessions: list | None, T: dict) -> list[str]:
    """The Ray sessions of a run (run.json "cluster"): workers, throughput, retried units."""
    if not sessions:
        return []
    L = [f"## {T['cluster']}", ""]
    for i, s in enumerate(sessions, 1):
        rates = ", ".join(f"{w['worker']} ({w.get('device', '?')} on {w.get('host', '?')}"
                          f"{', lost' if not w.get('alive', True) else ''}) {w['block_tokens_per_s']:,.0f}"
                          for w in s["workers"])
        L += [f"- {T['cluster_session'].format(i=i, started=s['started'], address=s['address'], units=s['units'], n=len(s['workers']), rates=rates)}"]
        if s["retried_units"]:
            who = ", ".join(f"{x['worker']}@{x.get('host')}" for x in s["lost_workers"])
            L += [f"  {T['cluster_retried'].format(r=s['retried_units'], lost=len(s['lost_workers']), who=who)}"]
        else:
            L += [f"  {T['cluster_none']}"]
    return L + [""]
