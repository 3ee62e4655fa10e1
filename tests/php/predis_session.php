<?php
// One PHP "request" using predis' session handler (Predis\Session\Handler, as
// Debian's php-predis ships it) on the daemon's Unix socket: open the session,
// add one to its counter, save. Prints the counter it wrote.
// Usage: php predis_session.php SOCKET_PATH SESSION_ID
// predis 1.1 predates PHP 8's return types: its deprecation notices are not ours.
error_reporting(E_ALL & ~E_DEPRECATED);
ini_set('display_errors', 'stderr');
ini_set('session.use_cookies', '0');
ini_set('session.use_only_cookies', '0');
ini_set('session.cache_limiter', '');

require 'Predis/Autoloader.php';
Predis\Autoloader::register();

$client = new Predis\Client(['scheme' => 'unix', 'path' => $argv[1]]);
$handler = new Predis\Session\Handler($client, ['gc_maxlifetime' => 600]);
$handler->register();

session_id($argv[2]);
if (!session_start()) {
    fwrite(STDERR, "session_start failed\n");
    exit(1);
}
$_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
$n = $_SESSION['n'];
if (!session_write_close()) {
    fwrite(STDERR, "session_write_close failed\n");
    exit(1);
}
echo $n, "\n";
