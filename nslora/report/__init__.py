"""Inspection of run folders: `nslora inspect` (terminal summary + self-contained HTML report), `nslora compare`,
and a TensorBoard logger the training graph can call. `report.data` reads a run folder into plain structures;
`report.terminal`, `report.html` and `report.plots` only present them."""
