"""The run machinery: command line, config, run directories, logging, start-up checks. Above the paper packages
(tasks, data, optimizers, meta, evaluate, mup), which import nothing from here."""
