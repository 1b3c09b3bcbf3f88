"""The work of each DVC stage, one module per stage and named like it: ``stages/<stage>.py`` parses the command
line and writes the outputs, ``ultraseg.pipeline.<stage>`` does the work with the library modules beneath it."""
