"""What a plan communicates and costs, and how plans compare.

    plan_report.py  `tpgpt plan`: the per-layer diagram, collectives per step, memory per rank
    costmodel.py    interconnect profiles and the alpha-beta prediction of a step
    evaluate.py     the exact loss of a model over a whole split
    sweep.py        `tpgpt sweep`: one model per plan, table and plots
    verify.py       `tpgpt verify`: parallel == dense, counts == plan
    numerics.py     when two computations count as equal (float64, float32, AdamW, training)
"""
