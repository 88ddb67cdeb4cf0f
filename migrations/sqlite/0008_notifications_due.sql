-- The senders look for pending deliveries of one channel that are due, oldest first. Only rows
-- waiting to be sent belong in that index: in-app rows are delivered when written, and sent rows
-- leave it, so most rows (the feed) never enter it and the notifier's inserts maintain one index
-- fewer.
DROP INDEX notifications_due;
CREATE INDEX notifications_due ON notifications (channel, next_attempt_us, seq)
    WHERE status = 'pending';
