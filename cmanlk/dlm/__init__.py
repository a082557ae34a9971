"""DLM control, the job of dlm_controld: `control` decides lockspace membership and recovery, `fencing`
who is fenced before it; pure, driven by cmanlk/runtime/dlmd.py."""
