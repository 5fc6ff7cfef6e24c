"""`lpdet search`: latency-aware architecture search with weight sharing (issue 11).

`settings` (the knobs and presets), `sandwich` (super-network training, sandwich rule),
`candidate` (one candidate: inherit, recalibrate, int8 export, AP on the selection split, measured
latency), `study` (the Optuna study: storage, workers, recovery of dead workers' trials),
`front` (Pareto front, files, plot), `driver` (the whole search), `cli` / `command` (the command).
"""
