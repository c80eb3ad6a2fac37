// The Kafka benchmark's load generator: an external producer of scene.approved and an observer of
// upscale.requested, as a studio service written in another language would be. It runs in a JVM
// of its own (started by bench/events.py with Java's source launcher, on the broker's own
// kafka-clients jar), so that the load it offers costs the two shared cores little: kafka-python
// spends about 1 ms of CPU per message sent, which the measured runtime would otherwise compete with.
//
// Usage: java -cp KAFKA_CLIENTS LoadGen.java BOOTSTRAP IN_TOPIC OUT_TOPIC RATE MESSAGES RESULTS TIMEOUT_S
//   MESSAGES: one line per message, "w" (warm-up) or "m" (measured), scene id, key, value, tab-separated;
//             the values are complete CloudEvents, built by the benchmark.
//   RATE:     messages per second, paced on a fixed schedule (the warm-up too, so that the JVMs have
//             compiled the hot paths before the measured messages); 0 = as fast as possible.
// Stdout: "warm" once every warm-up message's upscale.requested arrived, then "done" once the
//   results are written. RESULTS: "sent_done NS duplicates N unexpected N", then "ID SENT_NS ARRIVAL_NS"
//   per measured message (ARRIVAL_NS -1 if it never arrived). Times are System.nanoTime(), which
//   on Linux is CLOCK_MONOTONIC, the clock the benchmark reads too.

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class LoadGen {
    private static final Pattern SOURCE_SCENE = Pattern.compile("\"source_scene_id\"\\s*:\\s*(\\d+)");

    record Message(long sceneId, byte[] key, byte[] value) {}

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], inTopic = args[1], outTopic = args[2];
        double rate = Double.parseDouble(args[3]);
        Path messagesFile = Path.of(args[4]), resultsFile = Path.of(args[5]);
        long timeoutNs = (long) (Double.parseDouble(args[6]) * 1e9);

        List<Message> warm = new ArrayList<>(), measured = new ArrayList<>();
        for (String line : Files.readAllLines(messagesFile, StandardCharsets.UTF_8)) {
            String[] f = line.split("\t", 4);
            Message m = new Message(Long.parseLong(f[1]), f[2].getBytes(StandardCharsets.UTF_8),
                                    f[3].getBytes(StandardCharsets.UTF_8));
            (f[0].equals("w") ? warm : measured).add(m);
        }
        Set<Long> warmIds = new HashSet<>(), measuredIds = new HashSet<>();
        warm.forEach(m -> warmIds.add(m.sceneId()));
        measured.forEach(m -> measuredIds.add(m.sceneId()));

        Map<Long, Long> arrivals = new ConcurrentHashMap<>();
        AtomicInteger warmArrived = new AtomicInteger(), duplicates = new AtomicInteger(), unexpected = new AtomicInteger();
        AtomicBoolean stop = new AtomicBoolean();

        // Like the project's make_producer (idempotent, acks=all) but linger.ms=0: a review tool
        // publishing an approval sends it now.
        Properties producerProps = new Properties();
        producerProps.put("bootstrap.servers", bootstrap);
        producerProps.put("enable.idempotence", "true");
        producerProps.put("acks", "all");
        producerProps.put("linger.ms", "0");
        producerProps.put("max.in.flight.requests.per.connection", "5");
        producerProps.put("key.serializer", ByteArraySerializer.class.getName());
        producerProps.put("value.serializer", ByteArraySerializer.class.getName());

        // The observer reads every partition from the beginning, with no consumer group.
        Properties consumerProps = new Properties();
        consumerProps.put("bootstrap.servers", bootstrap);
        consumerProps.put("enable.auto.commit", "false");
        consumerProps.put("key.deserializer", ByteArrayDeserializer.class.getName());
        consumerProps.put("value.deserializer", ByteArrayDeserializer.class.getName());

        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps);
             KafkaConsumer<byte[], byte[]> observer = new KafkaConsumer<>(consumerProps)) {
            List<TopicPartition> partitions = new ArrayList<>();
            observer.partitionsFor(outTopic).forEach(p -> partitions.add(new TopicPartition(outTopic, p.partition())));
            observer.assign(partitions);
            observer.seekToBeginning(partitions);

            Thread observe = new Thread(() -> {
                while (!stop.get()) {
                    var records = observer.poll(Duration.ofMillis(100));
                    long now = System.nanoTime(); // arrival = when poll handed the records over
                    for (ConsumerRecord<byte[], byte[]> record : records) {
                        Matcher match = SOURCE_SCENE.matcher(new String(record.value(), StandardCharsets.UTF_8));
                        long sceneId = match.find() ? Long.parseLong(match.group(1)) : -1;
                        if (measuredIds.contains(sceneId)) {
                            if (arrivals.putIfAbsent(sceneId, now) != null) duplicates.incrementAndGet();
                        } else if (warmIds.contains(sceneId)) {
                            warmArrived.incrementAndGet();
                        } else {
                            unexpected.incrementAndGet();
                        }
                    }
                }
            }, "observer");
            observe.start();
            try {
                send(producer, inTopic, warm, rate);
                producer.flush();
                long deadline = System.nanoTime() + timeoutNs;
                while (warmArrived.get() < warm.size()) {
                    if (System.nanoTime() > deadline || !observe.isAlive())
                        throw new IllegalStateException("warm-up: only " + warmArrived.get() + "/" + warm.size()
                                                        + " upscale.requested arrived");
                    Thread.sleep(10);
                }
                System.out.println("warm");
                System.out.flush();

                long[] sent = send(producer, inTopic, measured, rate);
                producer.flush();
                long sentDone = System.nanoTime();
                deadline = sentDone + timeoutNs;
                while (arrivals.size() < measured.size() && System.nanoTime() < deadline && observe.isAlive())
                    Thread.sleep(10);

                StringBuilder out = new StringBuilder();
                out.append("sent_done ").append(sentDone).append(" duplicates ").append(duplicates.get())
                   .append(" unexpected ").append(unexpected.get()).append('\n');
                for (int i = 0; i < measured.size(); i++) {
                    long id = measured.get(i).sceneId();
                    out.append(id).append(' ').append(sent[i]).append(' ')
                       .append(arrivals.getOrDefault(id, -1L)).append('\n');
                }
                Files.writeString(resultsFile, out);
                System.out.println("done");
                System.out.flush();
            } finally {
                stop.set(true);
                observe.join(5000);
            }
        }
    }

    /** Sends `messages` at `rate` per second (0: at once); returns each send's time. */
    static long[] send(KafkaProducer<byte[], byte[]> producer, String topic, List<Message> messages, double rate) {
        long[] sent = new long[messages.size()];
        long start = System.nanoTime() + 10_000_000L;
        for (int i = 0; i < messages.size(); i++) {
            if (rate > 0) {
                // A fixed schedule, not a sleep per message: a late message does not push every
                // later one back, so the offered load really is `rate`.
                long due = start + (long) (i * 1e9 / rate);
                for (long wait = due - System.nanoTime(); wait > 0; wait = due - System.nanoTime())
                    LockSupport.parkNanos(wait);
            }
            Message m = messages.get(i);
            sent[i] = System.nanoTime();
            producer.send(new ProducerRecord<>(topic, m.key(), m.value()));
        }
        return sent;
    }
}
