-- Runs once, when the data directory is initialised (docker-entrypoint-initdb.d).
-- The guide's monitoring views with PostgreSQL 13+ names: pg_stat_statements says
-- total_exec_time / mean_exec_time, and pg_stat_user_indexes says relname / indexrelname.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

CREATE OR REPLACE VIEW kb_query_performance AS
SELECT
    query,
    calls,
    total_exec_time,
    mean_exec_time,
    min_exec_time,
    max_exec_time,
    stddev_exec_time
FROM pg_stat_statements
WHERE query LIKE '%knowledge_bases%'
   OR query LIKE '%documents%'
   OR query LIKE '%chunks%'
ORDER BY total_exec_time DESC;

CREATE OR REPLACE VIEW kb_storage_usage AS
SELECT
    schemaname,
    tablename,
    pg_size_pretty(pg_total_relation_size(format('%I.%I', schemaname, tablename))) AS size,
    pg_total_relation_size(format('%I.%I', schemaname, tablename)) AS size_bytes
FROM pg_tables
WHERE tablename IN ('knowledge_bases', 'documents', 'chunks', 'audit_logs')
ORDER BY size_bytes DESC;

CREATE OR REPLACE VIEW kb_index_usage AS
SELECT
    schemaname,
    relname AS tablename,
    indexrelname AS indexname,
    idx_tup_read,
    idx_tup_fetch,
    idx_scan
FROM pg_stat_user_indexes
WHERE relname IN ('knowledge_bases', 'documents', 'chunks')
ORDER BY idx_scan DESC;
