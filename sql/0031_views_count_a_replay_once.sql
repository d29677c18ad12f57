-- 0031_views_count_a_replay_once.sql
-- A batch inserted again under its token (a retry after a timeout that did land, the tracking
-- log replayed after a crash, a retry after a view failed) is kept once by its source table;
-- its views must keep it once too. Inserts carry deduplicate_blocks_in_dependent_materialized_
-- views = 1 (core/clickhouse.py), so each view's block is pushed again and its target drops it
-- when it already holds it (a view that failed the first time stores it now). A target can only
-- drop what it remembers: each keeps the ids of its last 10,000 blocks, as the sources do.
-- Their direct inserts (rebuilds, backfills) say insert_deduplicate = 0: identical rows
-- inserted again on purpose must not be taken for a replay. stats_session_touches keeps no
-- window (nor, on a cluster, the replicated one): a replay touches its hours again (a max, so
-- harmless), and a seal made between a view's failure and the retry that fills it no longer
-- counts.
ALTER TABLE tracking_events_hourly ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE blog_views_hourly ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE product_views_hourly ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE stats_hourly ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE stats_daily ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE stats_sessions ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE stats_visits ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE stats_pages ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE visitor_events ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE domain_events_hourly ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE customer_orders_hourly ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE customer_first_order ${ON_CLUSTER} MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE stats_session_touches ${ON_CLUSTER} MODIFY SETTING replicated_deduplication_window = 0;
