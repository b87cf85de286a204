"""Sources: what turns Infobip's hand-overs into spool appends.

``pull`` drains the pull inbox on the scheduler's ticks. Every source writes to the same
spool; the flusher moves the rows on to the sink, whichever source appended them.
"""
