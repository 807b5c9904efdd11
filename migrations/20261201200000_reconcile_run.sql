-- Each reconciliation's report, for the console's overview ("the last
-- reconciliation's findings") and for operators asking what a past run
-- found. Written by the reconciler at the end of every run; the table keeps
-- the last 1,000 runs (the reconciler trims it in the same statement), so it
-- stays a few megabytes whatever the history: a report holds at most
-- MAX_KEPT_FINDINGS findings and exact counts per kind.
-- Nothing older reads or writes it: an older release ignores it (expand only).
CREATE TABLE IF NOT EXISTS reconcile_run (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    -- The run's report as `idem reconcile --json` prints it.
    report      jsonb       NOT NULL
);
