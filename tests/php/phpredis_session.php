<?php
// One PHP "request" using phpredis' session handler (session.save_handler=redis,
// its options passed with -d by tests/test_php.py): open the session named on the
// command line, add one to its counter, hold the session for the given number of
// milliseconds (so that concurrent requests overlap), then save it.
// Prints the counter it wrote; exits non-zero if the session could not be opened
// or saved, with PHP's warning on stderr.
// Usage: php [-d ...] phpredis_session.php SESSION_ID HOLD_MS
ini_set('session.use_cookies', '0');
ini_set('session.use_only_cookies', '0');
ini_set('session.cache_limiter', '');
ini_set('display_errors', 'stderr');
error_reporting(E_ALL);

session_id($argv[1]);
if (!session_start()) {
    fwrite(STDERR, "session_start failed\n");
    exit(1);
}
$n = ($_SESSION['n'] ?? 0) + 1;
$_SESSION['n'] = $n;
$_SESSION['writers'][] = getmypid();
usleep(1000 * (int)$argv[2]);
if (!session_write_close()) {
    fwrite(STDERR, "session_write_close failed\n");
    exit(1);
}
echo $n, "\n";
